"""What a route costs beside a provider's own token: one gateway, both tokens, paired rounds.

    .venv/bin/python bench/route_cost.py [--rounds 9] [--duration 2] [--concurrency 16]
        [--stream] [--aa]

One `llmgateway gateway` (one worker, SQLite) serves `bench/run.py`'s route config: provider
`bench` and two twins, and the route `gpt-4o-mini` over the three (weights 3:2:1). wrk sends
the same chat request with the provider's token (A) and with the route's gateway token (B), A
and B taking turns, alternating which goes first. Each run is measured as the gateway process's
CPU time (user + system, from /proc) divided by the requests wrk completed: the figure that
decides throughput once the gateway is the bottleneck, and less sensitive than latency to what
else runs on the machine. "B-A" is the median over rounds of the paired difference; with `--aa`
B is the provider's token too, which gives this sitting's noise. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from run import ROUTE_TOKEN, TOKEN, ensure_wrk, fake_upstream, gateway, route_config, wrk_script

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def load(wrk: str, url: str, script: Path, concurrency: int, seconds: float) -> tuple[int, int]:
    """One wrk run: (requests completed, of which not 2xx/3xx)."""
    threads = "-t2" if concurrency > 1 else "-t1"
    command = [wrk, threads, f"-c{concurrency}", "-s", str(script), f"-d{seconds:g}s"]
    out = subprocess.run(
        [*command, url + "/v1/chat/completions"], check=True, capture_output=True, text=True
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    if done is None:
        raise ValueError(f"no request count in the output of wrk:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(done.group(1)), int(bad.group(1)) if bad else 0


def paired_rounds(
    wrk: str,
    targets: Mapping[str, tuple[str, int, Path]],
    rounds: int,
    seconds: float,
    concurrency: int,
) -> dict[str, list[float]]:
    """The gateway CPU µs per request of each target (name: base URL, gateway pid, wrk script),
    one run per target per round, the targets taking turns in a rotating order so that each
    round's figures are seconds apart (after a 1 s warm-up each)."""
    for url, _, script in targets.values():
        load(wrk, url, script, concurrency, 1.0)
    names = list(targets)
    costs: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        turned = turn % len(names)
        for name in names[turned:] + names[:turned]:
            url, pid, script = targets[name]
            before = cpu_seconds(pid)
            done, bad = load(wrk, url, script, concurrency, seconds)
            if bad:
                raise SystemExit(f"{name}: {bad} of {done} requests failed")
            costs[name].append((cpu_seconds(pid) - before) / done * 1e6)
    return costs


def paired(costs: Mapping[str, list[float]], a: str, b: str) -> list[float]:
    """Each round's B minus its A."""
    return [b_cost - a_cost for a_cost, b_cost in zip(costs[a], costs[b], strict=True)]


def spread(differences: list[float]) -> str:
    """A paired difference as printed: its median, min and max."""
    return (
        f"{statistics.median(differences):+7.1f} µs (paired median; "
        f"min {min(differences):+.1f}, max {max(differences):+.1f})"
    )


def paired_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of a paired-rounds bench (described by the first line of `doc`)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=int, default=2, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    return parser


def pin_apart() -> set[int]:
    """Keep this process and what it starts from now on (the fake upstream, wrk) off the first
    CPU, and return that CPU's set, for the gateway (`pin`): the gateway then shares its core
    with nothing of the bench's, and its CPU per request moves far less between runs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs or more")
    os.sched_setaffinity(0, cpus[1:])
    return {cpus[0]}


def pin(pid: int, cpus: set[int]) -> None:
    """Move every thread of process `pid` to `cpus` (util-linux's taskset)."""
    listed = ",".join(str(cpu) for cpu in sorted(cpus))
    subprocess.run(["taskset", "-a", "-p", "-c", listed, str(pid)], check=True, capture_output=True)


def need_wrk() -> str:
    """wrk's path (installed when missing and allowed), or exit."""
    wrk = ensure_wrk()
    if wrk is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    return wrk


def main() -> None:
    parser = paired_parser(__doc__)
    parser.add_argument("--aa", action="store_true", help="B is the provider's token too")
    parser.add_argument(
        "--pin", action="store_true", help="the gateway alone on the first CPU, the rest apart"
    )
    args = parser.parse_args()
    wrk = need_wrk()
    pinned = pin_apart() if args.pin else None
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base:
        folder = Path(tmp)
        with gateway(route_config(folder, base), 1) as (url, pid):
            if pinned is not None:
                pin(pid, pinned)
            a = wrk_script(folder, TOKEN, args.stream)
            b = folder / "b.lua"  # a copy: the A-A run's B is the same request
            b.write_text(
                wrk_script(folder, TOKEN if args.aa else ROUTE_TOKEN, args.stream).read_text()
            )
            targets = {"A": (url, pid, a), "B": (url, pid, b)}
            costs = paired_rounds(wrk, targets, args.rounds, args.duration, args.concurrency)
    what = "stream" if args.stream else "chat"
    b_name = "provider token again (A-A)" if args.aa else "route of 3 targets"
    print(f"{what}, wrk c={args.concurrency}, {args.rounds} rounds of {args.duration:g} s")
    print(f"A provider token      {statistics.median(costs['A']):7.1f} µs CPU per request")
    print(f"B {b_name:20s}{statistics.median(costs['B']):7.1f} µs CPU per request")
    print(f"B-A {spread(paired(costs, 'A', 'B'))}")


if __name__ == "__main__":
    main()
