"""What a client with limits adds per request, counted locally and on Redis, beside the plain
rows: one table.

    .venv/bin/python bench/client_cost.py [--rounds 4] [--duration 2] [--redis-url URL]

Two `llmgateway gateway` processes (one worker each, SQLite) serve `bench/run.py`'s route
config (provider `bench` and two twins, the route `gpt-4o-mini` over the three) with two
`gateway.tokens` entries: `bench` without limits and `limited` with `rpm` and `max_parallel`
(high enough never to refuse: every request is counted, none is turned away). One gateway counts
limits in its process (`limits.backend: local`), the other on Redis (`limits.backend: redis`,
a key prefix of its own). The rows: the provider's own token (plain, no client), the gateway
token without limits and the client with limits, on each gateway. Each round, every row runs
at concurrency 1 (wrk's p50) and at 64 (wrk's rate, and the gateway process's CPU time per
request from /proc), the rows taking turns in a rotating order; a cell is the median of its
rounds, "+" columns the median over rounds of the paired difference from the same gateway's
token without limits (what the limits add). Linux only (reads /proc); skips the Redis rows
when Redis is unreachable.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from route_cost import cpu_seconds, need_wrk
from run import (
    ROUTE_TOKEN,
    TOKEN,
    Load,
    fake_upstream,
    gateway,
    print_aligned,
    route_config,
    run_wrk,
    wrk_script,
)

LIMITED_TOKEN = "limited-client-token-0001"
LIMITS = {"rpm": 100_000_000, "max_parallel": 10_000}
"""Limits every request is counted against and none reaches."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row: a gateway, its pid, a token, and which row its limits are compared with."""

    label: str
    url: str
    pid: int
    script: Path
    baseline: str | None


@dataclass(frozen=True, slots=True)
class Run:
    """One round of one row: p50 at c=1 (ms), rate at c=64, CPU µs per request at c=64."""

    p50: float
    rate: float
    cpu: float


def tokens() -> list[dict[str, object]]:
    """The gateway tokens: the route's without limits, the client's with them."""
    return [
        {"name": "bench", "token": ROUTE_TOKEN, "routes": ["*"]},
        {"name": "limited", "token": LIMITED_TOKEN, "routes": ["*"], **LIMITS},
    ]


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            return True
    except OSError:
        return False


def one_round(wrk: str, target: Target, seconds: float) -> Run:
    """The row's c=1 latency, then its c=64 rate and CPU per request."""
    quiet = run_wrk(wrk, target.url, target.script, 1, seconds, warm_up=False)
    before = cpu_seconds(target.pid)
    loaded: Load = run_wrk(wrk, target.url, target.script, 64, seconds, warm_up=False)
    spent = cpu_seconds(target.pid) - before
    if quiet.errors or loaded.errors:
        raise SystemExit(f"{target.label}: {quiet.errors + loaded.errors} requests failed")
    return Run(quiet.p50, loaded.rps, spent / (loaded.rps * seconds) * 1e6)


def measure(wrk: str, targets: list[Target], rounds: int, seconds: float) -> dict[str, list[Run]]:
    """Every row `rounds` times, the rows taking turns in a rotating order (after a warm-up)."""
    for target in targets:
        run_wrk(wrk, target.url, target.script, 64, 1.0, warm_up=False)
    runs: dict[str, list[Run]] = {target.label: [] for target in targets}
    for turn in range(rounds):
        turned = turn % len(targets)
        for target in targets[turned:] + targets[:turned]:
            runs[target.label].append(one_round(wrk, target, seconds))
    return runs


def table(targets: list[Target], runs: dict[str, list[Run]]) -> list[list[str]]:
    rows = [["row", "p50 c=1 ms", "+p50 µs", "rate c=64", "CPU µs/req", "+CPU µs"]]
    for target in targets:
        mine = runs[target.label]
        added = ["", ""]
        if target.baseline is not None:
            pairs = list(zip(mine, runs[target.baseline], strict=True))
            added = [
                f"{statistics.median((a.p50 - b.p50) * 1000 for a, b in pairs):+.0f}",
                f"{statistics.median(a.cpu - b.cpu for a, b in pairs):+.1f}",
            ]
        rows.append(
            [
                target.label,
                f"{statistics.median(r.p50 for r in mine):.3f}",
                added[0],
                f"{statistics.median(r.rate for r in mine):,.0f}",
                f"{statistics.median(r.cpu for r in mine):.1f}",
                added[1],
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LLMGATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    wrk = need_wrk()
    backends: dict[str, dict[str, object]] = {"local": {"backend": "local"}}
    if reachable(args.redis_url):
        prefix = f"bench-client-cost-{os.getpid()}"
        backends["redis"] = {"backend": "redis", "redis_url": args.redis_url, "key_prefix": prefix}
    else:
        print(f"Redis unreachable at {args.redis_url}: the Redis rows are skipped")
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base, ExitStack() as stack:
        folder = Path(tmp)
        scripts = {
            key: wrk_script(folder, key, False) for key in (TOKEN, ROUTE_TOKEN, LIMITED_TOKEN)
        }
        targets: list[Target] = []
        for name, limits in backends.items():
            more = {"gateway": {"tokens": tokens()}, "limits": limits}
            config = route_config(folder, base, tag=f"client-{name}", more=more)
            url, pid = stack.enter_context(gateway(config, 1))
            if name == "local":
                targets.append(Target("provider token (plain)", url, pid, scripts[TOKEN], None))
            plain = f"gateway token, no limits ({name} gw)"
            targets.append(Target(plain, url, pid, scripts[ROUTE_TOKEN], None))
            limited = f"client rpm+max_parallel, {name}"
            targets.append(Target(limited, url, pid, scripts[LIMITED_TOKEN], plain))
        runs = measure(wrk, targets, args.rounds, args.duration)
    print(
        f"wrk, {args.duration} s per run, median of {args.rounds} rounds; "
        f"cores: {os.cpu_count()}; + columns: beside the same gateway's token without limits"
    )
    print_aligned(table(targets, runs), left=1)


if __name__ == "__main__":
    main()
