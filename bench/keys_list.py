"""`llmgateway keys list|show` at 100,000 keys, on SQLite and PostgreSQL.

    .venv/bin/python bench/keys_list.py [--keys N] [--pg-url URL]

Per database, after one sync of N keys (two models each, so 2N rows), a quarter of them marked
invalid: the default page (100 rows and the count of the rest), a filtered page (`--status
invalid_key`), every row walked page by page and rendered as the table would be (and, in a
second walk, the most Python memory held at once, from tracemalloc), and `keys show` of a 4-digit
prefix. PostgreSQL gets a fresh schema, dropped afterwards; it is skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import sqlalchemy as sa

from llmgateway.cli.key_tables import list_lines
from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_list import by_fingerprint, count_matching, listing_pages
from llmgateway.store.tables import key_status
from sync import DEFAULT_PG, make_keys, pg_store, sqlite_store, write_files


@asynccontextmanager
async def synced_store(
    open_store: Callable[[Path], AbstractAsyncContextManager[Store]],
    keys: list[str],
    invalid_every: int = 4,
) -> AsyncIterator[Store]:
    """A migrated store with `keys` synced from the files of a temporary folder (`settings`),
    the rows of every `invalid_every`-th key invalid (401; 0: none)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "keys"
        folder.mkdir()
        write_files(folder, keys)
        async with open_store(Path(tmp)) as store:
            await store.upgrade()
            await run_sync(settings(folder), store)
            if invalid_every:
                async with store.engine.begin() as conn:
                    await conn.execute(
                        sa.update(key_status)
                        .where(key_status.c.key_id % invalid_every == 0)
                        .values(status=KeyStatus.INVALID_KEY.value, status_code=401)
                    )
            yield store


def settings(folder: Path) -> Settings:
    models = {m: {"endpoint_suffix": "/chat/completions"} for m in ("m1", "m2")}
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(folder),
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": models,
        "access_control": {"gateway_access_token": "bench-token-0001"},
    }
    return Settings.model_validate({"providers": {"bench": provider}})


async def timed(work: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    if asyncio.iscoroutine(result):
        result = await result
    return time.perf_counter() - start, result


async def scenarios(
    name: str, open_store: Callable[[Path], AbstractAsyncContextManager[Store]], keys: list[str]
) -> list[tuple[str, str, float, str]]:
    rows: list[tuple[str, str, float, str]] = []
    async with synced_store(open_store, keys) as store:

        async def first(chosen: KeyFilter) -> str:
            shown = [row async for page in listing_pages(store, chosen, 100) for row in page]
            more = await count_matching(store, chosen) - len(shown)
            return f"{len(shown)} rows, {more} more"

        for label, chosen in (
            ("list (first 100)", KeyFilter()),
            (
                "list --status invalid_key",
                KeyFilter(statuses=frozenset({KeyStatus.INVALID_KEY})),
            ),
        ):
            seconds, note = await timed(functools.partial(first, chosen))
            rows.append((name, label, seconds, str(note)))

        async def walk() -> str:
            count, now = 0, time.time()
            async for page in listing_pages(store, KeyFilter()):
                count += len(list_lines(page, now, header=not count))
            return f"{count} rows"

        seconds, note = await timed(walk)
        tracemalloc.start()  # a second walk: tracing slows Python down several times
        await walk()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append((name, "list --limit 0 (all)", seconds, f"{note}, peak {peak / 2**20:.1f} MiB"))
        prefix = fingerprint(keys[12345 % len(keys)])[:4]
        seconds, found = await timed(lambda: by_fingerprint(store, prefix))
        keys_found = len(found[0])  # type: ignore[index]
        rows.append((name, f"show {prefix} (4 digits)", seconds, f"{keys_found} keys"))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    keys = make_keys(args.keys, random.Random(42))
    rows = await scenarios("sqlite", sqlite_store, keys)
    try:
        rows += await scenarios("postgresql", pg_store(args.pg_url), keys)
    except OSError as exc:
        print(f"postgresql skipped: {type(exc).__name__}: {exc}")
    print(f"{'database':<11} {'command':<27} {'seconds':>8}  result")
    for database, label, seconds, note in rows:
        print(f"{database:<11} {label:<27} {seconds:>8.3f}  {note}")


if __name__ == "__main__":
    asyncio.run(main())
