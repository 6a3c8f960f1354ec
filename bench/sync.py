"""Key-file sync throughput: 100,000 keys in 10 files into SQLite and PostgreSQL.

    .venv/bin/python bench/sync.py [--keys N] [--pg-url URL]

Per database: the first sync into an empty store, a re-sync with no change, and a re-sync after
10% of the keys were replaced (10% removed, as many added). PostgreSQL gets a fresh schema that
is dropped afterwards ($LLMGATEWAY_TEST_PG_URL or the local `test` database); it is skipped when
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import string
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from llmgateway.config.settings import Settings
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store

FILES = 10
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def make_keys(count: int, rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    return ["sk-bench-" + "".join(rng.choices(alphabet, k=40)) for _ in range(count)]


def write_files(folder: Path, keys: list[str]) -> None:
    for i in range(FILES):
        (folder / f"keys-{i}.txt").write_text("\n".join(keys[i::FILES]) + "\n")


def settings(folder: Path) -> Settings:
    return Settings.model_validate(
        {
            "providers": {
                "bench": {
                    "provider_type": "openai_like",
                    "keys_path": str(folder),
                    "api_base_url": "https://api.example.com/v1",
                    "default_model": "m1",
                    "models": {"m1": {"endpoint_suffix": "/chat/completions"}},
                    "access_control": {"gateway_access_token": "bench-token-0001"},
                }
            }
        }
    )


@asynccontextmanager
async def sqlite_store(workdir: Path) -> AsyncIterator[Store]:
    async with await Store.open(f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}") as store:
        yield store


def pg_store(url: str) -> Callable[[Path], AbstractAsyncContextManager[Store]]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    @asynccontextmanager
    async def open_store(_: Path) -> AsyncIterator[Store]:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            async with await Store.open(url, schema=schema) as store:
                yield store
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()

    return open_store


async def scenarios(
    name: str,
    open_store: Callable[[Path], AbstractAsyncContextManager[Store]],
    keys: list[str],
    rng: random.Random,
) -> list[tuple[str, str, int, float]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "keys"
        folder.mkdir()
        write_files(folder, keys)
        config = settings(folder)
        async with open_store(workdir) as store:
            await store.upgrade()
            changed = keys[len(keys) // 10 :] + make_keys(len(keys) // 10, rng)
            steps = [("first sync", None), ("no change", None), ("10% changed", changed)]
            for scenario, new_keys in steps:
                if new_keys is not None:
                    write_files(folder, new_keys)
                start = time.perf_counter()
                report = await run_sync(config, store)
                seconds = time.perf_counter() - start
                assert report.providers[0].keys is not None
                results.append((name, scenario, len(keys), seconds))
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    rng = random.Random(42)
    keys = make_keys(args.keys, rng)
    rows = await scenarios("sqlite", sqlite_store, keys, rng)
    try:
        rows += await scenarios("postgresql", pg_store(args.pg_url), keys, rng)
    except OSError as exc:
        print(f"postgresql skipped: {type(exc).__name__}: {exc}")
    print(f"{'database':<11} {'scenario':<12} {'keys':>8} {'seconds':>8} {'keys/s':>9}")
    for database, scenario, count, seconds in rows:
        print(f"{database:<11} {scenario:<12} {count:>8} {seconds:>8.2f} {count / seconds:>9,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
