"""Start-up time of `llmgateway gateway` and `llmgateway serve` on a store already up to date.

    .venv/bin/python bench/startup.py [--runs 5] [--keys 10000,100000] [--pg-url URL] [--no-pg]
                                      [--src OTHER_CHECKOUT/src]

Per database (SQLite; PostgreSQL when reachable: $LLMGATEWAY_TEST_PG_URL or the local `test`
database, a fresh database per key count, dropped afterwards) and key count, the store is
prepared once (`llmgateway db upgrade --sync`), then each command is started `--runs` times.
The clock starts just before the process is spawned; three clients poll it side by side every
10 ms (each poll costs the gateway some CPU too): `/healthz` until it answers 200, `/readyz`
until 200, and a proxied chat completion (to the fake upstream, `llmgateway fake-upstream` in
its own process) until 200. Each cell is the median of the runs (after one warm-up start, not
counted), in milliseconds from exec; bytecode is cached, as in the image. CPU is the CPU time
the process (and the children it waited for) had used when `/readyz` first answered 200: on a
busy machine the wall times stretch, the CPU time much less. The machine's cores are shared
with the pollers and the fake upstream, so compare rows of one sitting only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from sqlalchemy.engine import make_url

from run import fake_upstream, free_port

TOKEN = "bench-gateway-token-0001"
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
POLL_SEC = 0.01
DEADLINE_SEC = 120.0
COMMANDS = ("gateway", "serve")


@dataclass(frozen=True, slots=True)
class Start:
    """One start: milliseconds from exec to each first 200."""

    healthz: float
    readyz: float
    proxied: float
    cpu: float  # CPU time used when /readyz first answered 200 (see `cpu_ms`)


def write_keys(folder: Path, count: int) -> Path:
    keys = folder / f"keys-{count}"
    keys.mkdir(parents=True, exist_ok=True)
    names = (f"sk-bench-good-{i:012d}-abcdefghijklmnop" for i in range(count))
    (keys / "keys.txt").write_text("\n".join(names) + "\n")
    return keys


def write_config(folder: Path, name: str, keys: Path, base: str, database: str) -> Path:
    config: dict[str, Any] = {
        "database": {"url": database},
        "logging": {"level": "WARNING"},
        "providers": {
            "bench": {
                "provider_type": "openai_like",
                "keys_path": str(keys),
                "api_base_url": base + "/v1",
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": TOKEN},
            }
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


PYCACHE = Path(tempfile.gettempdir()) / "llmgateway-bench-pycache"


SOURCE: list[Path] = []
"""The checkout's src folder the processes import llmgateway from (`--src`); none: as installed."""


def environment() -> dict[str, str]:
    """The processes' environment: bytecode cached (in a folder of the bench's own, leaving the
    venv alone), as an installed image has it (`UV_COMPILE_BYTECODE=1`); without it every
    start compiles every module again. With `--src`, llmgateway comes from there."""
    env = {**os.environ, "LLMGATEWAY_DOTENV": "0", "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if SOURCE:
        env |= {"PYTHONPATH": str(SOURCE[0]), "PYTHONSAFEPATH": "1"}
    return env


def prepare(config: Path) -> None:
    """Migrate the store and sync the files once: later starts find it up to date."""
    command = [sys.executable, "-m", "llmgateway", "db", "upgrade", "--sync"]
    subprocess.run(
        [*command, "--config", str(config)], check=True, capture_output=True, env=environment()
    )


def cpu_ms(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far, with that of the children
    it has waited for (a migration process run before serving), in milliseconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


async def first_200(
    port: int, method: str, path: str, body: bytes, since: float, stop: float, pid: int = 0
) -> tuple[float, float]:
    """Milliseconds from `since` until `method path` on `port` first answers 200, and the CPU
    time process `pid` had used by then (0 without a pid)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    if body:
        head += f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    while time.monotonic() < stop:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                line = await reader.readline()
                if line.split(b" ", 2)[1:2] == [b"200"]:
                    return (time.monotonic() - since) * 1000, cpu_ms(pid) if pid else 0.0
            finally:
                writer.close()
        await asyncio.sleep(POLL_SEC)
    raise SystemExit(f"{method} {path}: no 200 within {DEADLINE_SEC:g} s")


async def measure(command: str, config: Path) -> Start:
    port = free_port()
    log = config.with_name(f"{config.stem}-{command}.log")
    argv = [sys.executable, "-m", "llmgateway", command, "--config", str(config)]
    argv += ["--port", str(port)]
    with log.open("wb") as stderr:
        since = time.monotonic()
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, env=environment()
        )
    try:
        stop = since + DEADLINE_SEC
        (healthz, _), (readyz, cpu), (proxied, _) = await asyncio.gather(
            first_200(port, "GET", "/healthz", b"", since, stop),
            first_200(port, "GET", "/readyz", b"", since, stop, process.pid),
            first_200(port, "POST", "/v1/chat/completions", CHAT, since, stop),
        )
    except BaseException:
        print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
        raise
    finally:
        process.terminate()
        process.wait()
    return Start(healthz, readyz, proxied, cpu)


@contextlib.asynccontextmanager
async def sqlite_url(folder: Path, count: int) -> AsyncIterator[str]:
    yield f"sqlite:///{folder / f'start-{count}.db'}"


def pg_url(url: str) -> Any:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    @contextlib.asynccontextmanager
    async def fresh_database(_: Path, count: int) -> AsyncIterator[str]:
        name = f"bench_start_{count}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    return fresh_database


async def pg_reachable(url: str) -> bool:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


def median(starts: list[Start], field: str) -> float:
    return float(statistics.median(float(getattr(start, field)) for start in starts))


async def rows_for(
    folder: Path, base: str, database: str, opener: Any, counts: list[int], runs: int
) -> list[list[str]]:
    rows = []
    for count in counts:
        keys = write_keys(folder, count)
        async with opener(folder, count) as url:
            config = write_config(folder, f"{database}-{count}", keys, base, url)
            await asyncio.to_thread(prepare, config)
            for command in COMMANDS:
                await measure(command, config)  # a warm-up: bytecode written, files cached
                starts = [await measure(command, config) for _ in range(runs)]
                rows.append(
                    [
                        command,
                        database,
                        f"{count:,}",
                        f"{median(starts, 'healthz'):,.0f}",
                        f"{median(starts, 'readyz'):,.0f}",
                        f"{median(starts, 'proxied'):,.0f}",
                        f"{max(s.proxied for s in starts):,.0f}",
                        f"{median(starts, 'cpu'):,.0f}",
                    ]
                )
                print("  ".join(rows[-1]), file=sys.stderr)
    return rows


def print_aligned(table: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = (
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


async def main_async(args: argparse.Namespace, base: str, folder: Path) -> list[list[str]]:
    counts = [int(c) for c in args.keys.split(",")]
    rows = await rows_for(folder, base, "sqlite", sqlite_url, counts, args.runs)
    if not args.no_pg:
        if await pg_reachable(args.pg_url):
            rows += await rows_for(folder, base, "postgres", pg_url(args.pg_url), counts, args.runs)
        else:
            print(f"PostgreSQL unreachable at {make_url(args.pg_url).render_as_string()}: skipped")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="starts per cell (median)")
    parser.add_argument("--keys", default="10000,100000", help="key counts, comma-separated")
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument(
        "--src", type=Path, help="import llmgateway from this src folder (another checkout's)"
    )
    args = parser.parse_args()
    if args.src is not None:
        SOURCE.append(args.src.resolve())
    with workdir() as folder, fake_upstream() as base:
        rows = asyncio.run(main_async(args, base, folder))
    header = ["command", "store", "keys", "healthz", "readyz", "proxied", "proxied max", "CPU"]
    print(
        f"start-up on a store up to date, ms from exec to the first 200, median of {args.runs} "
        f"runs (CPU: the process's CPU time and its finished children's, at /readyz's 200); "
        f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    print_aligned([header, *rows])


if __name__ == "__main__":
    main()
