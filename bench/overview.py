"""The console overview's store reads at 100,000 keys, on SQLite and PostgreSQL.

    .venv/bin/python bench/overview.py [--keys N] [--used N] [--runs N] [--pg-url URL]

Per database, after one sync of N keys (two models each, a quarter of the rows marked invalid)
and 24 hours of usage counts (`--used` keys used every hour, one in ten of them failing,
written through `store.usage.record` in the gateways' batches of 1,000): the time of one usage
batch, then `store.overview.read` (breakers, proxies, last sync, attention list, 24 h of rates,
the state counts and probe backlog from `PoolCounts`) `--runs` times 0.1 s apart, so that the
pool's counts are refreshed in the background several times meanwhile, with its median and
p95; the time of one read of the pool's counts (what a refresh costs, off the views); and the
fragment htmx polls, asked for over loopback (`GET /admin/`, Bearer), as seen by the client.
PostgreSQL gets a fresh schema, dropped afterwards; it is skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp

from keys_list import synced_store
from llmgateway.conductor.usage_writer import BATCH_SIZE
from llmgateway.config.settings import Settings
from llmgateway.console.app import console_app
from llmgateway.console.context import Console
from llmgateway.console.listener import own_listener
from llmgateway.observe.metrics_http import listening
from llmgateway.records import USAGE_HOUR, UsageCount
from llmgateway.store import Store, overview, usage
from sync import DEFAULT_PG, make_keys, pg_store, sqlite_store

BATCH = BATCH_SIZE  # the gateways' write-behind batch
TOKEN = "bench-admin-token-0001-abcdefghijkl"
PAUSE = 0.1
"""Seconds between two reads of the overview (the page polls every few seconds)."""

Row = tuple[str, str, str]


async def seed_usage(store: Store, keys: int, used: int, now: float) -> list[float]:
    """24 hours of counts for `used` keys an hour; the seconds each batch took."""
    rng = random.Random(7)
    first = int(now // USAGE_HOUR) * USAGE_HOUR - 23 * USAGE_HOUR
    seconds = []
    for hour in range(first, first + 24 * USAGE_HOUR, USAGE_HOUR):
        chosen = rng.sample(range(1, keys + 1), used)
        counts = [
            UsageCount("bench", key_id, "m1", hour, 50, 0 if key_id % 10 else rng.randint(1, 20))
            for key_id in chosen
        ]
        for start in range(0, len(counts), BATCH):
            began = time.perf_counter()
            await usage.record(store, counts[start : start + BATCH], hour + 60.0)
            seconds.append(time.perf_counter() - began)
    return seconds


async def served(store: Store, runs: int) -> str:
    """The overview's fragment asked for over loopback as htmx polls it, `runs` times
    `PAUSE` apart: the time to the whole answer (server time, rendering and the socket)."""
    settings = Settings.model_validate({"admin": {"token": TOKEN}})
    console = Console.create(settings, store)
    headers = {"Authorization": f"Bearer {TOKEN}", "HX-Request": "true"}
    times = []
    async with (
        listening(own_listener(console_app(console)), "127.0.0.1", 0) as base,
        aiohttp.ClientSession(headers=headers) as client,
    ):
        for _ in range(runs + 1):  # the first waits for the pool's counts: not counted
            began = time.perf_counter()
            async with client.get(f"{base}/admin/") as answer:
                assert answer.status == 200
                await answer.read()
            times.append(time.perf_counter() - began)
            await asyncio.sleep(PAUSE)
    return _spread(times[1:])


def _spread(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


async def scenarios(
    name: str,
    open_store: Callable[[Path], AbstractAsyncContextManager[Store]],
    keys: list[str],
    used: int,
    runs: int,
) -> list[Row]:
    rows: list[Row] = []
    async with synced_store(open_store, keys) as store:
        now = time.time()
        batches = await seed_usage(store, len(keys), used, now)
        rows.append(
            (
                name,
                f"usage.record ({BATCH} slots)",
                f"median {statistics.median(batches) * 1000:.1f} ms, "
                f"max {max(batches) * 1000:.1f} ms ({len(batches)} batches)",
            )
        )
        pool = overview.PoolCounts(store, time.time)
        began = time.perf_counter()
        await pool.get()  # the first view waits for the pool's counts
        first = time.perf_counter() - began
        times = []
        found = None
        for _ in range(runs):  # spread over several refreshes of the pool's counts
            began = time.perf_counter()
            found = await overview.read(store, time.time(), pool)
            times.append(time.perf_counter() - began)
            await asyncio.sleep(PAUSE)
        assert found is not None
        assert len(found.attention) == overview.ATTENTION
        rows.append((name, f"overview.read ({runs} runs)", _spread(times)))
        rows.append((name, "pool counts (background)", f"{first * 1000:.1f} ms"))
        rows.append((name, f"GET /admin/ fragment ({runs} runs)", await served(store, runs)))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--used", type=int, default=10_000, help="keys used in each hour")
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    keys = make_keys(args.keys, random.Random(42))
    rows = await scenarios("sqlite", sqlite_store, keys, args.used, args.runs)
    try:
        rows += await scenarios("postgresql", pg_store(args.pg_url), keys, args.used, args.runs)
    except OSError as exc:
        print(f"postgresql skipped: {type(exc).__name__}: {exc}")
    print(f"{args.keys} keys ({2 * args.keys} status rows), {args.used} keys used per hour, 24 h")
    print(f"{'database':<11} {'step':<34} result")
    for database, label, note in rows:
        print(f"{database:<11} {label:<34} {note}")


if __name__ == "__main__":
    asyncio.run(main())
