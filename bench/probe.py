"""Keeper probe throughput against the fake upstream running in its own process.

    .venv/bin/python bench/probe.py [--keys N] [--batch-size N] [--once-keys N] [--pg-url URL]
                                    [--skip-rounds]

Per database (SQLite, then PostgreSQL when reachable):

- rounds in this process over `--keys` (10,000) keys: a first round over untested keys (the auth
  probe, then one generation probe each; `batch_size` at once, no rate cap) and a steady round
  over valid keys (one generation probe each), `batch_size` at once, no batch delay. Printed per
  round: keys/s, HTTP requests/s, store write transactions/s, rows written/s, and the process's
  peak RSS so far. The clock is moved by hand between rounds, so the rounds are exact.
- the operator's first day: `llmgateway worker --once` as its own process with the shipped
  defaults (only the keys folder, the fake's URL and the database set) over `--once-keys`
  (100,000) untested keys: the wall time of the whole command (sync, the first full probe round,
  maintenance) and its round's summary. The old code paced untested keys like tested ones
  (`batch_size` 30 every `batch_delay_sec` 15 s: 2 keys/s, about 14 h for 100k).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from llmgateway.config.settings import Settings
from llmgateway.keeper.run import Keeper
from llmgateway.keeper.summary import RoundSummary
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store
from llmgateway.transport.upstream import HttpUpstream

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass(slots=True)
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[str]:
    """`llmgateway fake-upstream` in its own process; yields its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmgateway",
        "fake-upstream",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    try:
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        process.terminate()
        await process.wait()


def settings(folder: Path, base: str, batch_size: int) -> Settings:
    return Settings.model_validate(
        {
            "providers": {
                "bench": {
                    "provider_type": "openai_like",
                    "keys_path": str(folder),
                    "api_base_url": base + "/v1",
                    "default_model": "gpt-4o-mini",
                    "shared_key_status": True,
                    "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                    "access_control": {"gateway_access_token": "bench-token-0001"},
                    "worker_health_policy": {
                        "batch_size": batch_size,
                        "batch_delay_sec": 0,
                        # the raw throughput: untested keys `batch_size` at once, no rate cap
                        "first_check": {
                            "concurrency": batch_size,
                            "start_rate": 100_000,
                            "max_rate": 100_000,
                        },
                    },
                }
            }
        }
    )


@asynccontextmanager
async def sqlite_store(workdir: Path, clock: Clock) -> AsyncIterator[Store]:
    async with await Store.open(f"sqlite:///{workdir / 'bench.db'}", clock=clock) as store:
        yield store


def pg_store(url: str) -> Callable[[Path, Clock], AbstractAsyncContextManager[Store]]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    @asynccontextmanager
    async def open_store(_: Path, clock: Clock) -> AsyncIterator[Store]:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            async with await Store.open(url, schema=schema, clock=clock) as store:
                yield store
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()

    return open_store


async def rounds(
    name: str,
    open_store: Callable[[Path, Clock], AbstractAsyncContextManager[Store]],
    base: str,
    count: int,
    batch_size: int,
) -> list[tuple[str, str, RoundSummary]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "keys"
        folder.mkdir()
        keys = [f"sk-bench-{i:06d}-abcdefghijklmnopqrstuvwxyz" for i in range(count)]
        (folder / "keys.txt").write_text("\n".join(keys) + "\n")
        config = settings(folder, base, batch_size)
        clock = Clock()
        async with open_store(workdir, clock) as store:
            await store.upgrade()
            await run_sync(config, store)
            upstream = HttpUpstream()
            keeper = Keeper(config, store, upstream, clock=clock)
            try:
                results.append((name, "first (untested)", await keeper.probe_round()))
                clock.now += 3600
                results.append((name, "steady (valid)", await keeper.probe_round()))
            finally:
                await upstream.close()
    return results


@dataclass(frozen=True, slots=True)
class OnceRun:
    database: str
    keys: int
    wall: float
    round_line: str
    exit_code: int


async def worker_once(name: str, url: str, base: str, count: int) -> OnceRun:
    """`llmgateway worker --once` over `count` untested keys with the shipped defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "keys"
        folder.mkdir()
        keys = [f"sk-first-{i:06d}-abcdefghijklmnopqrstuvwxyz" for i in range(count)]
        (folder / "keys.txt").write_text("\n".join(keys) + "\n")
        document = {
            "database": {"url": url.replace("{dir}", str(workdir))},
            "providers": {
                "bench": {
                    "provider_type": "openai_like",
                    "keys_path": str(folder),
                    "api_base_url": base + "/v1",
                    "default_model": "gpt-4o-mini",
                    "shared_key_status": True,
                    "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                    "access_control": {"gateway_access_token": "bench-token-0001"},
                }
            },
        }
        config = workdir / "providers.yaml"
        config.write_text(json.dumps(document))  # JSON is YAML
        env = {**os.environ, "LLMGATEWAY_DOTENV": "0"}
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", "worker", "--once", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await process.communicate()
        wall = time.perf_counter() - started
    found = [line for line in out.decode().splitlines() if line.startswith("probe round:")]
    if process.returncode:
        print(f"{name}: worker --once exit {process.returncode}: {err.decode()[-500:]}")
    return OnceRun(name, count, wall, found[0] if found else "(no round)", process.returncode or 0)


async def pg_database_url(url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A fresh PostgreSQL database for the CLI run and how to drop it."""
    parsed = make_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--once-keys", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--skip-rounds", action="store_true", help="only the worker --once rows")
    args = parser.parse_args()
    table: list[tuple[str, str, RoundSummary, float]] = []
    once: list[OnceRun] = []
    async with fake_upstream() as base:
        for name, opener in (("sqlite", sqlite_store), ("postgresql", pg_store(args.pg_url))):
            if args.skip_rounds:
                break
            try:
                found = await rounds(name, opener, base, args.keys, args.batch_size)
            except OSError as exc:
                print(f"{name} skipped: {type(exc).__name__}: {exc}")
                continue
            table += [(db, label, summary, peak_rss_mib()) for db, label, summary in found]
        if args.once_keys:
            once.append(
                await worker_once("sqlite", "sqlite:///{dir}/bench.db", base, args.once_keys)
            )
            try:
                pg_url, drop = await pg_database_url(args.pg_url)
            except OSError as exc:
                print(f"postgresql skipped: {type(exc).__name__}: {exc}")
            else:
                try:
                    once.append(await worker_once("postgresql", pg_url, base, args.once_keys))
                finally:
                    await drop()
    print(f"concurrency: batch_size={args.batch_size} probes at once, 1 provider, no batch delay")
    header = ("database", "round", "keys", "seconds", "keys/s", "req/s", "writes/s", "rows/s")
    print(f"{header[0]:<11} {header[1]:<17}" + "".join(f"{h:>9}" for h in header[2:]), end="")
    print(f"{'peak RSS':>11}")
    for database, label, s, rss in table:
        seconds = max(s.seconds, 1e-9)
        print(
            f"{database:<11} {label:<17} {s.probed:>9} {s.seconds:>9.2f} "
            f"{s.probed / seconds:>8,.0f} {s.requests / seconds:>8,.0f} "
            f"{s.writes / seconds:>8,.1f} {s.probed / seconds:>8,.0f} {rss:>7.0f} MiB"
        )
    if once:
        print("\nworker --once, shipped defaults, untested keys (the first full round):")
        print(f"{'database':<11} {'keys':>9} {'wall s':>9} {'keys/s':>9}  round")
        for run in once:
            print(
                f"{run.database:<11} {run.keys:>9,} {run.wall:>9.1f} "
                f"{run.keys / max(run.wall, 1e-9):>9,.0f}  {run.round_line}"
            )
        print("before (the old pacing, batch_size 30 every 15 s): 2 keys/s, 100k in about 14 h")


if __name__ == "__main__":
    asyncio.run(main())
