"""`llmgateway keys disable|enable|reset|recheck` at 100,000 keys, on SQLite and PostgreSQL.

    .venv/bin/python bench/key_actions.py [--keys N] [--pg-url URL]

Per database, after one sync of N keys (two models each, so 2N rows), a quarter of them marked
rate-limited: `disable --all` (then the most Python memory held at once, from tracemalloc, in
`enable --all`), the same two as bulk jobs of the console (submitted, then run by the Keeper's
job runner, resting between chunks on SQLite as it does beside the probes), `reset --status
rate_limited`, and `recheck` of one key by fingerprint prefix. Each works 1,000 keys per
transaction. PostgreSQL gets a fresh schema, dropped afterwards; it is
skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import sqlalchemy as sa

from keys_list import synced_store
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.bulk_jobs import JobRunner
from llmgateway.observe.masking import fingerprint
from llmgateway.records import Actor, KeyFilter
from llmgateway.store import Store
from llmgateway.store.job_runs import run_action
from llmgateway.store.jobs import job, submit
from llmgateway.store.key_actions import Action, Chosen, Progress
from llmgateway.store.tables import key_status
from sync import DEFAULT_PG, make_keys, pg_store, sqlite_store


async def scenarios(
    name: str, open_store: Callable[[Path], AbstractAsyncContextManager[Store]], keys: list[str]
) -> list[tuple[str, str, float, str]]:
    rows: list[tuple[str, str, float, str]] = []
    async with synced_store(open_store, keys, invalid_every=0) as store:
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.update(key_status)
                .where(key_status.c.key_id % 4 == 0)
                .values(status=KeyStatus.RATE_LIMITED.value, cooldown_until=time.time() + 60)
            )

        async def act(label: str, action: Action, chosen: Chosen, traced: bool = False) -> None:
            if traced:
                tracemalloc.start()
            start = time.perf_counter()
            done: Progress = await run_action(store, action, chosen)
            seconds = time.perf_counter() - start
            note = f"{done.matched} keys, {done.changed} changed, {done.rows} rows"
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                note += f", peak {peak / 2**20:.1f} MiB (traced, slower)"
            rows.append((name, label, seconds, note))

        async def bulk_job(label: str, action: Action, chosen: Chosen) -> None:
            start = time.perf_counter()
            job_id = await submit(store, action, chosen, Actor("bench", "local", "bench"))
            await JobRunner(store, "bench-keeper").run_pending(asyncio.Event())
            seconds = time.perf_counter() - start
            done = await job(store, job_id)
            assert done is not None
            assert done.finished
            note = f"{done.total} keys, {done.changed} changed, {done.rows} rows"
            rows.append((name, label, seconds, note))

        everything = Chosen(KeyFilter())
        await act("disable --all", Action.DISABLE, everything)
        await act("enable --all", Action.ENABLE, everything, traced=True)
        await bulk_job("console job: disable all", Action.DISABLE, everything)
        await bulk_job("console job: enable all", Action.ENABLE, everything)
        limited = Chosen(KeyFilter(statuses=frozenset({KeyStatus.RATE_LIMITED})))
        await act("reset --status rate_limited", Action.RESET, limited)
        one = Chosen(KeyFilter(), (fingerprint(keys[12345 % len(keys)])[:8],))
        await act("recheck PREFIX (8 digits)", Action.RECHECK, one)
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
    print(f"{'database':<11} {'command':<29} {'seconds':>8}  result")
    for database, label, seconds, note in rows:
        print(f"{database:<11} {label:<29} {seconds:>8.3f}  {note}")


if __name__ == "__main__":
    asyncio.run(main())
