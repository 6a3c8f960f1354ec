"""`llmgateway keys export` at 100,000 keys, on SQLite and PostgreSQL.

    .venv/bin/python bench/keys_export.py [--keys N] [--pg-url URL]

Per database, after one sync of N keys (two models each), a quarter of them marked invalid:
every key exported as CSV to /dev/null page by page, then `--status invalid_key`; a second walk
of the full export gives the most Python memory held at once (tracemalloc), which must not grow
with N. PostgreSQL gets a fresh schema, dropped afterwards; it is skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from keys_list import synced_store, timed
from llmgateway.core.outcomes import KeyStatus
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_export import export_pages
from sync import DEFAULT_PG, make_keys, pg_store, sqlite_store


async def export(store: Store, chosen: KeyFilter) -> str:
    """What `keys export --format csv` does, into /dev/null."""
    count = 0
    with open(os.devnull, "w", encoding="utf-8", newline="") as sink:
        writer = csv.writer(sink, lineterminator="\n")
        async for page in export_pages(store, chosen):
            writer.writerows(
                (k.provider, k.fingerprint, k.status, k.source, k.secret) for k in page
            )
            count += len(page)
    return f"{count} keys"


async def scenarios(
    name: str, open_store: Callable[[Path], AbstractAsyncContextManager[Store]], keys: list[str]
) -> list[tuple[str, str, float, str]]:
    rows: list[tuple[str, str, float, str]] = []
    async with synced_store(open_store, keys) as store:
        invalid = KeyFilter(statuses=frozenset({KeyStatus.INVALID_KEY}))
        seconds, note = await timed(lambda: export(store, KeyFilter()))
        tracemalloc.start()
        await export(store, KeyFilter())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append((name, "export (all)", seconds, f"{note}, peak {peak / 2**20:.1f} MiB"))
        seconds, note = await timed(lambda: export(store, invalid))
        rows.append((name, "export --status invalid_key", seconds, str(note)))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    keys = make_keys(args.keys, random.Random(42))
    print(f"{'database':<11} {'command':<28} {'seconds':>8}  result", flush=True)
    for name, open_store in (("sqlite", sqlite_store), ("postgresql", pg_store(args.pg_url))):
        try:
            rows = await scenarios(name, open_store, keys)
        except OSError as exc:
            print(f"{name} skipped: {type(exc).__name__}: {exc}")
            continue
        for database, label, seconds, note in rows:
            print(f"{database:<11} {label:<28} {seconds:>8.3f}  {note}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
