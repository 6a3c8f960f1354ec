"""What usage accounting (`gateway.token_accounting`) costs per request: gateways that differ in
that one setting, paired rounds, with the noise of the comparison beside it.

    .venv/bin/python bench/usage_cost.py [--rounds 9] [--duration 2] [--concurrency 16]
        [--stream]

Three `llmgateway gateway` processes (one worker each, SQLite, `bench/run.py`'s provider config):
"off" and "off again" with `gateway.token_accounting: false`, "on" with `true` (it reads every
answer's usage, counts it and writes it behind; a stream is asked for its usage chunk, which is
stripped again: `stream_usage: auto`). wrk sends the same request to each with the provider's
token, the three taking turns (`route_cost.paired_rounds`); each run is measured as the gateway
process's CPU time per request. "on - off" is the median over rounds of the paired difference;
"off again - off" (A-A) is the noise of comparing two processes in this sitting: a cost within
it is not told apart from nothing. With `--stream` a fourth gateway, "on, never", has accounting
on and `stream_usage: never`: its streams are read but not asked for their usage chunk (they
count as missing), which tells the reading from the asking and stripping. Linux only (reads
/proc).
"""

from __future__ import annotations

import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from route_cost import need_wrk, paired, paired_parser, paired_rounds, spread
from run import TOKEN, fake_upstream, gateway, write_config, wrk_script

SIDES: dict[str, dict[str, object]] = {
    "off": {"gateway": {"token_accounting": False}},
    "off again": {"gateway": {"token_accounting": False}},
    "on": {"gateway": {"token_accounting": True}},
}
NEVER = {
    "gateway": {"token_accounting": True},
    "providers": {"bench": {"gateway_policy": {"stream_usage": "never"}}},
}


def main() -> None:
    args = paired_parser(__doc__).parse_args()
    wrk = need_wrk()
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base, ExitStack() as stack:
        folder = Path(tmp)
        script = wrk_script(folder, TOKEN, args.stream)
        sides = {**SIDES, "on, never": NEVER} if args.stream else SIDES
        targets = {}
        for number, (side, extra) in enumerate(sides.items()):
            config = write_config(folder, base, 100, tag=f"-{number}", extra=extra)
            url, pid = stack.enter_context(gateway(config, 1))
            targets[side] = (url, pid, script)
        costs = paired_rounds(wrk, targets, args.rounds, args.duration, args.concurrency)
    what = "stream" if args.stream else "chat"
    print(f"{what}, wrk c={args.concurrency}, {args.rounds} rounds of {args.duration:g} s")
    for side in costs:
        print(f"{side:<16}{statistics.median(costs[side]):7.1f} µs CPU per request")
    print(f"on - off        {spread(paired(costs, 'off', 'on'))}")
    if "on, never" in costs:
        print(f"on, never - off {spread(paired(costs, 'off', 'on, never'))}")
    print(f"off again - off {spread(paired(costs, 'off', 'off again'))}  (A-A: the noise)")


if __name__ == "__main__":
    main()
