"""The gateway benchmark: one command, one table.

    .venv/bin/python bench/run.py [--duration 3] [--rounds 3] [--keys-rss 100000] [--skip-rates]

The fake upstream runs in its own process (`llmgateway fake-upstream`); the gateway runs as
`llmgateway gateway` (1 and 2 workers, side by side) on SQLite with 100 keys. wrk drives each
target (direct to the fake, through the gateway) non-streaming and streaming at concurrency 1,
64 and 256 (installed with apt-get when missing; without it a Python load generator is used and
the table says so), the targets taking turns for `--rounds` rounds; each cell is the median of
its rounds. wrk times whole responses, so the streaming time to first byte is measured apart,
at concurrency 1, by a small client that stops its clock at the first body byte. "added" is the
median over rounds of the gateway's p50/p99 minus direct's in the same round. Then: key-file sync
and Keeper probe rates (bench/sync.py, bench/probe.py, on SQLite) and the gateway's RSS with
100,000 keys, after a load run. Everything shares this machine's cores: wrk, the fake and the
gateway compete for them, so compare rows of one sitting only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from llmgateway.transport import http1

TOKEN = "bench-gateway-token-0001"
ROUTE_TOKEN = "bench-route-token-0001"
METRICS_TOKEN = "bench-metrics-token-0001"
DIRECT_KEY = "sk-bench-good-direct-0000000000"
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]%s}'
CONCURRENCY = (1, 64, 256)
TTFB_REQUESTS = 400


@dataclass(frozen=True, slots=True)
class Load:
    """One load run: requests per second and latency percentiles in milliseconds."""

    rps: float
    p50: float
    p99: float
    errors: int


@dataclass(frozen=True, slots=True)
class Row:
    what: str
    through: str
    concurrency: str
    rate: str
    p50: str
    p99: str
    added_p50: str
    added_p99: str


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def fake_upstream() -> Iterator[str]:
    """`llmgateway fake-upstream` in its own process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llmgateway", "fake-upstream", "--port", "0", "--chunks", "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    try:
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        process.terminate()
        process.wait()


def write_config(
    folder: Path,
    base: str,
    keys: int,
    failing: int = 0,
    tag: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A gateway config with `keys` keys, the first `failing` of them always rate-limited (its
    own database per `tag`), with the settings of `extra` merged in."""
    keys_dir = folder / f"keys-{keys}-{failing}"
    keys_dir.mkdir(parents=True, exist_ok=True)
    names = [
        f"sk-bench-{'ratelimited' if i < failing else 'good'}-{i:012d}-abcdefghijklmnop"
        for i in range(keys)
    ]
    (keys_dir / "keys.txt").write_text("\n".join(names) + "\n")
    config = {
        "database": {"url": f"sqlite:///{folder / f'gw-{keys}-{failing}{tag}.db'}"},
        "logging": {"level": "WARNING"},
        "metrics": {"access_token": METRICS_TOKEN},
        "providers": {
            "bench": {
                "provider_type": "openai_like",
                "keys_path": str(keys_dir),
                "api_base_url": base + "/v1",
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": TOKEN},
            }
        },
    }
    path = folder / f"config-{keys}-{failing}{tag}.yaml"
    path.write_text(yaml.safe_dump(merged(config, extra or {})))
    return path


def route_config(
    folder: Path, base: str, tag: str = "route", more: Mapping[str, Any] | None = None
) -> Path:
    """`write_config`'s provider and two more like it, and a route named after their model
    over the three (weights 3:2:1, one tier), reached with the gateway token `ROUTE_TOKEN`: the
    same requests as the single-provider rows, resolved, planned and rewritten (its own
    database per `tag`, the settings of `more` merged in)."""
    keys_dir = folder / "keys-100-0"
    twin = {
        "provider_type": "openai_like",
        "keys_path": str(keys_dir),
        "api_base_url": base + "/v1",
        "default_model": "gpt-4o-mini",
        "shared_key_status": True,
        "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
    }
    targets = [
        {"provider": name, "model": "gpt-4o-mini", "weight": weight}
        for name, weight in (("bench", 3), ("bench-two", 2), ("bench-three", 1))
    ]
    extra = {
        "providers": {"bench-two": twin, "bench-three": twin},
        "gateway": {"tokens": [{"name": "bench", "token": ROUTE_TOKEN, "routes": ["*"]}]},
        "routes": {"gpt-4o-mini": {"targets": targets}},
    }
    return write_config(folder, base, 100, tag=tag, extra=merged(extra, more or {}))


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, mappings merged key by key at every depth."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def source_env(src: Path | None) -> dict[str, str] | None:
    """The environment in which `python -m llmgateway` imports the package from `src` (a
    checkout's src folder) rather than the installed one; None: the installed one. PYTHONPATH
    comes before site-packages (and the editable install's path); PYTHONSAFEPATH keeps the
    working folder off sys.path. Both pass to the processes the gateway starts."""
    if src is None:
        return None
    return {**os.environ, "PYTHONPATH": str(src), "PYTHONSAFEPATH": "1"}


@contextlib.contextmanager
def gateway(config: Path, workers: int, src: Path | None = None) -> Iterator[tuple[str, int]]:
    """`llmgateway gateway` in its own process(es), the code from `src` when given (see
    `source_env`); yields its base URL and pid. Its stderr goes to a file beside the config."""
    port = free_port()
    command = [sys.executable, "-m", "llmgateway", "gateway", "--config", str(config)]
    command += ["--port", str(port), "--workers", str(workers)]
    log = config.with_suffix(".log")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=source_env(src)
        )
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, process, log))
        yield url, process.pid
    finally:
        process.terminate()
        process.wait()


async def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(
                    f"the gateway exited during start-up (code {process.returncode}):\n{tail}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- load -------------------------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """wrk's path; installs it with apt-get when missing (and allowed), else None."""
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk is missing: installing it with apt-get install -y wrk", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if found is None:
        print("wrk unavailable: using the Python load generator (slower)", file=sys.stderr)
    return found


def wrk_script(folder: Path, key: str, stream: bool) -> Path:
    body = BODY % (',"stream":true' if stream else "")
    script = folder / f"post-{key[:12]}-{stream}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return script


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    wrk: str, url: str, script: Path, concurrency: int, seconds: float, warm_up: bool = True
) -> Load:
    threads = 1 if concurrency == 1 else 2
    base = [wrk, f"-t{threads}", f"-c{concurrency}", "-s", str(script), "--latency"]
    target = url + "/v1/chat/completions"
    if warm_up:
        subprocess.run([*base, "-d1s", target], check=True, capture_output=True)
    out = subprocess.run(
        [*base, f"-d{seconds:g}s", "--timeout", "10s", target],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    percent = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise ValueError(f"no Requests/sec in the output of wrk:\n{out}")
    rps = float(found.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Load(rps, _ms(percent["50"]), _ms(percent["99"]), errors)


def measure(
    wrk: str | None,
    folder: Path,
    url: str,
    key: str,
    stream: bool,
    concurrency: int,
    seconds: float,
) -> Load:
    """One load run against `url`: wrk when there is one, else the Python load generator."""
    if wrk is None:
        return asyncio.run(python_load(url, key, stream, concurrency, seconds))
    return run_wrk(wrk, url, wrk_script(folder, key, stream), concurrency, seconds)


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(\w+)", text)
    if found is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    number, unit = found.groups()
    return float(number) * _UNITS[unit]


async def python_load(url: str, key: str, stream: bool, concurrency: int, seconds: float) -> Load:
    """A closed-loop load generator (the fallback when wrk is missing)."""
    body = (BODY % (',"stream":true' if stream else "")).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def user() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                started = time.perf_counter()
                async with session.post(
                    url + "/v1/chat/completions", data=body, headers=headers
                ) as response:
                    await response.read()
                    errors += response.status != 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    latencies.sort()
    return Load(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


async def ttfb(url: str, key: str, requests: int) -> tuple[float, float]:
    """Median and p99 time to the first streamed body byte, ms, one request at a time.

    The client is llmgateway's own lean HTTP/1.1 client (about 50 µs of CPU per call, a fifth
    of aiohttp's), so its own cost and jitter stay small next to what is measured."""
    body = (BODY % ',"stream":true').encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    found: list[float] = []
    client = http1.Client()
    try:
        for index in range(requests + 50):
            started = time.perf_counter()
            response = await client.request(
                "POST",
                url + "/v1/chat/completions",
                headers,
                body,
                connect_timeout=5,
                read_timeout=30,
            )
            chunks = response.chunks()
            await anext(chunks)
            first = time.perf_counter() - started
            async for _ in chunks:
                pass
            response.close()
            if index >= 50:  # the first ones warm up connections and caches
                found.append(first * 1000)
    finally:
        await client.close()
    found.sort()
    return statistics.median(found), found[int(len(found) * 0.99)]


# --- the table --------------------------------------------------------------------------------


def load_rows(
    wrk: str | None, folder: Path, base: str, seconds: float, rounds: int
) -> tuple[list[Row], dict[str, float]]:
    """Every target (direct, gateway with 1 and 2 workers) runs at once; each load is measured
    `rounds` times, the targets taking turns (in a rotating order), so the "added" figures
    compare runs seconds apart, not minutes: on a shared VM the machine's own speed drifts.
    Each cell is the median of its rounds; "added" is the median of the paired differences."""
    rows: list[Row] = []
    figures: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        targets = {"direct": (base, DIRECT_KEY)}
        for workers in (1, 2):
            config = write_config(folder, base, 100, tag=f"{workers}w")
            targets[f"gateway {workers}w"] = (
                stack.enter_context(gateway(config, workers))[0],
                TOKEN,
            )
        routed = stack.enter_context(gateway(route_config(folder, base), 1))[0]
        targets["route 3 targets 1w"] = (routed, ROUTE_TOKEN)
        names = list(targets)
        for stream in (False, True):
            what = "stream" if stream else "chat"
            for concurrency in CONCURRENCY:
                runs: dict[str, list[Load]] = {name: [] for name in names}
                for turn in range(rounds):
                    turned = turn % len(names)
                    for name in names[turned:] + names[:turned]:
                        url, key = targets[name]
                        runs[name].append(
                            measure(wrk, folder, url, key, stream, concurrency, seconds)
                        )
                for name in names:
                    rows.append(_load_row(what, name, concurrency, runs[name], runs["direct"]))
                    figures[f"{name}/{what}/{concurrency}/rps"] = median_of(runs[name], "rps")
                    figures[f"{name}/{what}/{concurrency}/p50"] = median_of(runs[name], "p50")
                    figures[f"{name}/{what}/{concurrency}/added"] = _added(
                        runs[name], runs["direct"], "p50"
                    )
        found: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway 1w": []}
        for turn in range(rounds):
            for name in list(found)[turn % 2 :] + list(found)[: turn % 2]:
                found[name].append(asyncio.run(ttfb(*targets[name], TTFB_REQUESTS // rounds)))
    for name, values in found.items():
        p50 = statistics.median(v[0] for v in values)
        p99 = statistics.median(v[1] for v in values)
        added = ("", "")
        if name != "direct":
            pairs = list(zip(values, found["direct"], strict=True))
            figures["ttfb/added"] = statistics.median(v[0] - d[0] for v, d in pairs)
            added = (
                f"{figures['ttfb/added']:+.3f}",
                f"{statistics.median(v[1] - d[1] for v, d in pairs):+.3f}",
            )
        rows.append(Row("stream TTFB", name, "1", "", f"{p50:.3f}", f"{p99:.3f}", *added))
    return rows, figures


def median_of(loads: list[Load], field: str) -> float:
    values: list[float] = [getattr(load, field) for load in loads]
    return statistics.median(values)


def differences(loads: list[Load], others: list[Load], field: str) -> list[float]:
    """`field` of each load minus that of the other load of its round."""
    pairs = zip(loads, others, strict=True)
    return [getattr(load, field) - getattr(other, field) for load, other in pairs]


def _added(loads: list[Load], direct: list[Load], field: str) -> float:
    return statistics.median(differences(loads, direct, field))


def _load_row(what: str, name: str, concurrency: int, loads: list[Load], direct: list[Load]) -> Row:
    errors = sum(load.errors for load in loads)
    note = f" ({errors} err)" if errors else ""
    added = ("", "")
    if loads is not direct:
        added = (f"{_added(loads, direct, 'p50'):+.3f}", f"{_added(loads, direct, 'p99'):+.3f}")
    return Row(
        what,
        name,
        str(concurrency),
        f"{median_of(loads, 'rps'):,.0f}{note}",
        f"{median_of(loads, 'p50'):.3f}",
        f"{median_of(loads, 'p99'):.3f}",
        *added,
    )


def rate_rows(base: str) -> list[Row]:
    """Key-file sync and Keeper probe rates on SQLite, from bench/sync.py and bench/probe.py."""
    sys.path.insert(0, str(Path(__file__).parent))
    import probe  # bench/probe.py
    import sync  # bench/sync.py

    rows = []
    rng = random.Random(42)
    keys = sync.make_keys(100_000, rng)
    for _, scenario, count, seconds in asyncio.run(
        sync.scenarios("sqlite", sync.sqlite_store, keys, rng)
    ):
        rate = f"{count / seconds:,.0f} keys"
        rows.append(Row(f"sync: {scenario}", "100k keys", "", rate, "", "", "", ""))
    found = asyncio.run(probe.rounds("sqlite", probe.sqlite_store, base, 5000, 100))
    for _, label, summary in found:
        rate = f"{summary.probed / summary.seconds:,.0f} keys"
        rows.append(Row(f"probe: {label}", "5k keys", "100", rate, "", "", "", ""))
    return rows


RSS_LOAD_SEC = 30
"""Load before the second RSS reading: long enough for every one of 100,000 keys to serve (and
get its first status written); a few seconds under-reports by ~15 MiB."""


def rss_row(folder: Path, base: str, keys: int, wrk: str | None) -> tuple[Row, float]:
    config = write_config(folder, base, keys)
    with gateway(config, 1) as (url, pid):
        ready = rss_mib(pid)
        measure(wrk, folder, url, TOKEN, False, 64, RSS_LOAD_SEC)
        loaded = rss_mib(pid)
    note = f"{ready:.0f} MiB ready, {loaded:.0f} MiB after {RSS_LOAD_SEC} s at c=64"
    return Row("RSS", f"{keys // 1000}k keys", "64", note, "", "", "", ""), loaded


def writes_row(folder: Path, base: str, wrk: str | None, seconds: float) -> Row:
    """Store write transactions per second under load with 10% of the keys failing (429).

    Every write transaction takes the next store revision, so the revision counts them."""
    config = write_config(folder, base, 100, failing=10)
    database = folder / "gw-100-10.db"
    with gateway(config, 1) as (url, _):
        before = revision(database)
        started = time.perf_counter()
        load = measure(wrk, folder, url, TOKEN, False, 64, seconds)
        elapsed = time.perf_counter() - started
        writes = (revision(database) - before) / elapsed
    note = f"{load.rps:,.0f} req, {writes:.1f} writes"
    return Row("store writes, 10% keys 429", "gateway 1w", "64", note, "", "", "", "")


def revision(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return int(conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0])


def print_table(rows: list[Row]) -> None:
    header = Row("what", "through", "conc", "rate/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms")
    print_aligned([[getattr(row, f) for f in Row.__slots__] for row in [header, *rows]], left=2)


def print_aligned(table: list[list[str]], left: int) -> None:
    """Rows of text cells as columns: the first `left` aligned left, the others right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(
                c.ljust(w) if i < left else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each load per target")
    parser.add_argument("--keys-rss", type=int, default=100_000)
    parser.add_argument("--skip-rates", action="store_true", help="no sync/probe/RSS rows")
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base:
        folder = Path(tmp)
        rows, figures = load_rows(wrk, folder, base, args.duration, args.rounds)
        rows.append(writes_row(folder, base, wrk, args.duration))
        if not args.skip_rates:
            rows += rate_rows(base)
            row, _ = rss_row(folder, base, args.keys_rss, wrk)
            rows.append(row)
    generator = "wrk" if wrk else "Python load generator (wrk missing)"
    print(
        f"load: {generator}, {args.duration:g} s per run, median of {args.rounds} rounds; "
        f"cores: {os.cpu_count()}"
    )
    print_table(rows)
    added_c1 = figures["gateway 1w/chat/1/added"]
    added_ttfb = figures["ttfb/added"]
    ratio = figures["gateway 1w/chat/64/rps"] / figures["direct/chat/64/rps"]
    print(
        f"targets: added p50 at c=1 {added_c1:.3f} ms (<= 0.3), streaming TTFB added "
        f"{added_ttfb:.3f} ms (<= 0.5), c=64 throughput {ratio:.2f} of direct (>= 0.33)"
    )


if __name__ == "__main__":
    main()
