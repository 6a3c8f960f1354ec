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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--aa", action="store_true", help="B is the provider's token too")
    args = parser.parse_args()
    wrk = ensure_wrk()
    if wrk is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base:
        folder = Path(tmp)
        with gateway(route_config(folder, base), 1) as (url, pid):
            a = wrk_script(folder, TOKEN, args.stream)
            b = folder / "b.lua"  # a copy: the A-A run's B is the same request
            b.write_text(
                wrk_script(folder, TOKEN if args.aa else ROUTE_TOKEN, args.stream).read_text()
            )
            for script in (a, b):
                load(wrk, url, script, args.concurrency, 1.0)  # warm-up
            costs: dict[str, list[float]] = {"A": [], "B": []}
            for turn in range(args.rounds):
                for side in ("A", "B") if turn % 2 == 0 else ("B", "A"):
                    before = cpu_seconds(pid)
                    done, bad = load(
                        wrk, url, a if side == "A" else b, args.concurrency, args.duration
                    )
                    if bad:
                        raise SystemExit(f"{side}: {bad} of {done} requests failed")
                    costs[side].append((cpu_seconds(pid) - before) / done * 1e6)
    paired = [b_cost - a_cost for a_cost, b_cost in zip(costs["A"], costs["B"], strict=True)]
    what = "stream" if args.stream else "chat"
    b_name = "provider token again (A-A)" if args.aa else "route of 3 targets"
    print(f"{what}, wrk c={args.concurrency}, {args.rounds} rounds of {args.duration:g} s")
    print(f"A provider token      {statistics.median(costs['A']):7.1f} µs CPU per request")
    print(f"B {b_name:20s}{statistics.median(costs['B']):7.1f} µs CPU per request")
    print(
        f"B-A {statistics.median(paired):+7.1f} µs (paired median; min {min(paired):+.1f}, "
        f"max {max(paired):+.1f})"
    )


if __name__ == "__main__":
    main()
