"""The console's keys page at 100,000 keys, on SQLite and PostgreSQL.

    .venv/bin/python bench/console_keys.py [--keys N] [--runs R] [--pg-url URL]

Per database, after one sync of N keys (two models each, so 2N rows) and 100 keys of a second,
small provider (one status per key): a quarter of the rows invalid (401), a tenth rate-limited
(429), one in a thousand failing with 500, one key in a hundred disabled. Then the page's
store query (`store.key_page.key_page`: rows, bounded count, cursors) is timed R times per
case: the first page, a deep page (90% down), a page back, each filter, each sort, and the
filter and sort pairs that read the most; then a few of them as whole pages (`GET
/admin/keys`, request to last byte over loopback). Prints the p50 and p95 in ms. PostgreSQL
gets a fresh schema, dropped afterwards; it is skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from llmgateway.config.settings import Settings
from llmgateway.console.app import Console, console_app
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, suffix
from llmgateway.observe.metrics_http import listening
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_page import Cursor, PageQuery, Sort, key_page
from llmgateway.store.tables import key_status, keys
from sync import DEFAULT_PG, make_keys, pg_store, sqlite_store, write_files

SMALL = 100
"""Keys of the second provider."""
TOKEN = "bench-console-admin-token-0123456789"
PAGES = (
    ("GET first page (50)", ""),
    ("GET deep page (90%)", "deep"),
    ("GET state invalid_key", "state=invalid_key"),
    ("GET provider small", "provider=small"),
    ("GET failing_since desc 200", "sort=failing_since&dir=desc&size=200"),
    ("GET search suffix", "q=sample"),
)
"""The keys page over HTTP: request to last byte on loopback (server time plus the socket)."""


def settings(big: Path, small: Path) -> Settings:
    def provider(folder: Path, models: tuple[str, ...], shared: bool) -> dict[str, Any]:
        return {
            "provider_type": "openai_like",
            "keys_path": str(folder),
            "api_base_url": "https://api.example.com/v1",
            "default_model": models[0],
            "shared_key_status": shared,
            "models": {m: {"endpoint_suffix": "/chat/completions"} for m in models},
            "access_control": {"gateway_access_token": f"bench-token-{folder.name}"},
        }

    providers = {
        "bench": provider(big, ("m1", "m2"), False),
        "small": provider(small, ("s1",), True),
    }
    return Settings.model_validate({"providers": providers, "admin": {"token": TOKEN}})


async def mark(store: Store, now: float) -> None:
    """Statuses, codes, errors and disabled keys spread over the rows."""
    ks = key_status.c
    steps: list[tuple[sa.ColumnElement[bool], dict[str, Any]]] = [
        (ks.key_id % 4 == 0, {"status": "invalid_key", "status_code": 401, "error": "401 bad"}),
        (ks.key_id % 10 == 1, {"status": "rate_limited", "status_code": 429, "error": "429"}),
        (ks.key_id % 1000 == 7, {"status": "server_error", "status_code": 500, "error": "500"}),
    ]
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status).values(
                status=KeyStatus.VALID.value,
                status_code=200,
                next_check_at=now + (ks.key_id * 7919 % 3600),
            )
        )
        for where, values in steps:
            await conn.execute(
                sa.update(key_status)
                .where(where)
                .values(
                    status=values["status"],
                    status_code=values["status_code"],
                    error_message=values["error"],
                    failing_since=now - (ks.key_id * 7 % 86400),
                )
            )
        await conn.execute(sa.update(keys).where(keys.c.id % 100 == 3).values(disabled_at=now))
    async with store.engine.begin() as conn:  # as autovacuum (PostgreSQL) or `optimize` would
        await conn.execute(sa.text("ANALYZE"))


def cases(big: list[str]) -> list[tuple[str, PageQuery, Cursor | None]]:
    """(label, query, cursor) of each case timed."""
    everything = KeyFilter()
    deep = Cursor(Sort.KEY, False, False, None, len(big) * 9 // 10, "m1")
    sample = big[12345 % len(big)]
    out: list[tuple[str, PageQuery, Cursor | None]] = [
        ("first page (50)", PageQuery(everything), None),
        ("first page (200)", PageQuery(everything, size=200), None),
        ("deep page (90%)", PageQuery(everything), deep),
        (
            "page back (90%)",
            PageQuery(everything),
            Cursor(Sort.KEY, False, True, None, deep.key_id, "m1"),
        ),
        ("provider small (100 keys)", PageQuery(KeyFilter(provider="small")), None),
        ("model m2", PageQuery(KeyFilter(model="m2")), None),
        ("model shared", PageQuery(KeyFilter(model="shared")), None),
        ("status invalid_key", PageQuery(_status("invalid_key")), None),
        ("status server_error (0.1%)", PageQuery(_status("server_error")), None),
        ("status disabled", PageQuery(KeyFilter(disabled=True)), None),
        ("status code 429", PageQuery(KeyFilter(status_code=429)), None),
        ("status code 500", PageQuery(KeyFilter(status_code=500)), None),
        ("search fingerprint", PageQuery(KeyFilter(search=fingerprint(sample)[:6])), None),
        ("search suffix", PageQuery(KeyFilter(search=f"sk-…{suffix(sample)}")), None),
    ]
    for sort in (Sort.STATUS, Sort.FAILING_SINCE, Sort.NEXT_CHECK, Sort.STATUS_CODE):
        out.append((f"sort {sort.value}", PageQuery(everything, sort), None))
        out.append((f"sort {sort.value} desc", PageQuery(everything, sort, True), None))
    out += [
        ("rate_limited by next_check", PageQuery(_status("rate_limited"), Sort.NEXT_CHECK), None),
        ("code 500 by next_check", PageQuery(KeyFilter(status_code=500), Sort.NEXT_CHECK), None),
        (
            "small by failing_since",
            PageQuery(KeyFilter(provider="small"), Sort.FAILING_SINCE),
            None,
        ),
        ("disabled by status", PageQuery(KeyFilter(disabled=True), Sort.STATUS), None),
        (
            "m2 invalid by failing desc",
            PageQuery(
                KeyFilter(model="m2", statuses=_status("invalid_key").statuses),
                Sort.FAILING_SINCE,
                True,
            ),
            None,
        ),
    ]
    return out


def _status(name: str) -> KeyFilter:
    return KeyFilter(statuses=frozenset({KeyStatus(name)}))


_small = KeyFilter(provider="small")
_m2_invalid = KeyFilter(model="m2", statuses=frozenset({KeyStatus.INVALID_KEY}))


async def timed(
    store: Store, query: PageQuery, cursor: Cursor | None, runs: int
) -> tuple[list[float], int, str]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        page = await key_page(store, query, cursor)
        times.append((time.perf_counter() - start) * 1000)
    total = f"{page.total}{'+' if page.capped else ''}"
    return times, len(page.rows), total


def _p50_p95(times: list[float]) -> tuple[float, float]:
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
    return statistics.median(times), p95


async def over_http(
    config: Settings, store: Store, big: list[str], runs: int
) -> list[tuple[str, list[float], int]]:
    """The keys page's cases of `PAGES` through the console on a loopback socket."""
    root = web.Application()
    root.add_subapp("/admin", console_app(Console.create(config, store)))
    deep = Cursor(Sort.KEY, False, False, None, len(big) * 9 // 10, "m1").encode()
    found = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        listening(root, "127.0.0.1", 0) as url,
        aiohttp.ClientSession(headers=headers) as client,
    ):
        for label, query in PAGES:
            query = query.replace("deep", f"after={deep}").replace("sample", suffix(big[99]) or "")
            times, size = [], 0
            for _ in range(runs):
                start = time.perf_counter()
                async with client.get(f"{url}/admin/keys?{query}") as answer:
                    body = await answer.read()
                    assert answer.status == 200, (label, answer.status)
                times.append((time.perf_counter() - start) * 1000)
                size = len(body)
            found.append((label, times, size))
    return found


async def scenarios(
    name: str,
    open_store: Callable[[Path], AbstractAsyncContextManager[Store]],
    big: list[str],
    runs: int,
) -> list[tuple[str, str, float, float, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = Path(tmp) / "big", Path(tmp) / "small"
        for folder, chosen in zip(folders, (big, make_keys(SMALL, random.Random(7))), strict=True):
            folder.mkdir()
            write_files(folder, chosen)
        async with open_store(Path(tmp)) as store:
            await store.upgrade()
            await run_sync(settings(*folders), store)
            await mark(store, time.time())
            for label, query, cursor in cases(big):
                times, shown, total = await timed(store, query, cursor, runs)
                rows.append((name, label, *_p50_p95(times), f"{shown} rows of {total}"))
            config = settings(*folders)
            for label, times, size in await over_http(config, store, big, runs):
                rows.append((name, label, *_p50_p95(times), f"{size // 1024} KiB of HTML"))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    big = make_keys(args.keys, random.Random(42))
    rows = []
    if args.only != "postgresql":
        rows += await scenarios("sqlite", sqlite_store, big, args.runs)
    if args.only != "sqlite":
        try:
            rows += await scenarios("postgresql", pg_store(args.pg_url), big, args.runs)
        except OSError as exc:
            print(f"postgresql skipped: {type(exc).__name__}: {exc}")
    print(f"{'database':<11} {'case':<30} {'p50 ms':>7} {'p95 ms':>7}  result")
    for database, label, p50, p95, note in rows:
        print(f"{database:<11} {label:<30} {p50:>7.1f} {p95:>7.1f}  {note}")


if __name__ == "__main__":
    asyncio.run(main())
