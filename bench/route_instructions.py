"""What a route costs beside a provider's own token, in machine instructions: callgrind's count.

    .venv/bin/python bench/route_instructions.py [--rounds 7] [--requests 200] [--aa]

CPU time on a shared VM moves by tens of percent from one second to the next; valgrind's
callgrind counts the instructions the gateway executes instead, which move only with what the
process does. The gateway app (`bench/run.py`'s route config: provider `bench`, two twins, the
route `gpt-4o-mini` over the three) runs in one process under callgrind and is called as an
ASGI app (as `bench/route_ops.py` does), against the fake upstream in a process of its own.
Each round sends `--requests` chat requests with the provider's token (A) and as many with the
route's gateway token (B), in turns, and counts the instructions of each run. "B-A" is the
median over rounds of the paired difference per request, with its range; `--aa` makes B the
provider's token too, which gives the noise (the pool refresh and the write-behinds run when
they are due, in whichever run that is). Needs valgrind (Debian's package); about a minute per
round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from route_ops import request, route_app
from run import BODY, ROUTE_TOKEN, TOKEN

_CHILD = "--child"


def callgrind(*command: str) -> None:
    """Ask callgrind about this process (`callgrind_control`), spinning meanwhile: callgrind
    reads its commands while the program runs, not while it waits."""
    asker = subprocess.Popen(
        ["callgrind_control", *command, str(os.getpid())], stdout=subprocess.DEVNULL
    )
    while asker.poll() is None:
        sum(range(1000))


async def rounds(tokens: dict[str, str], rounds: int, requests: int) -> None:
    """The child's part: warm up, then each round one run per token, in turns, each counted
    alone and dumped (callgrind zeroes its counters at a dump)."""
    from llmgateway.conductor.memory import return_freed_memory

    body = (BODY % "").encode()
    # the pool refresh reads the store every few seconds: not in the runs measured
    async with route_app({"gateway": {"refresh_interval_sec": 3600}}) as app:
        for token in tokens.values():
            for _ in range(50):
                await request(app, token, body)
        return_freed_memory()  # as a gateway process does once started: the gc as it runs then
        names = list(tokens)
        for turn in range(rounds):
            order = names[turn % 2 :] + names[: turn % 2]
            for name in order:
                callgrind("--instr=on")
                for _ in range(requests):
                    await request(app, tokens[name], body)
                callgrind("--instr=off")
                callgrind(f"--dump={name}")


def counted(folder: Path) -> dict[str, list[int]]:
    """The instructions of each dumped run, by the name it was dumped under, in order."""
    found: dict[str, list[tuple[int, int]]] = {}
    for dump in folder.glob("out.*"):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: dump (\S+)", text, re.MULTILINE)
        part = re.search(r"^part: (\d+)", text, re.MULTILINE)
        total = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        if trigger and part and total:
            found.setdefault(trigger.group(1), []).append((int(part.group(1)), int(total.group(1))))
    return {name: [n for _, n in sorted(runs)] for name, runs in found.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _CHILD:
        tokens = {"A": TOKEN, "B": TOKEN if sys.argv[4] == "aa" else ROUTE_TOKEN}
        asyncio.run(rounds(tokens, int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--aa", action="store_true", help="B is the provider's token too")
    parser.add_argument("--verbose", action="store_true", help="print every run's count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={folder}/out.%p",
            sys.executable,
            __file__,
            _CHILD,
            str(args.rounds),
            str(args.requests),
            "aa" if args.aa else "ab",
        ]
        subprocess.run(command, check=True, capture_output=True)
        runs = counted(folder)
    a, b = runs["A"], runs["B"]
    per = float(args.requests)
    differences = [(y - x) / per for x, y in zip(a, b, strict=True)]
    b_name = "provider token again (A-A)" if args.aa else "route of 3 targets"
    print(f"chat, {args.rounds} rounds of {args.requests} requests, instructions per request")
    print(f"A provider token            {statistics.median(a) / per:10,.0f}")
    print(f"B {b_name:26s}{statistics.median(b) / per:10,.0f}")
    if args.verbose:
        print("A runs:", " ".join(f"{n / per:,.0f}" for n in a))
        print("B runs:", " ".join(f"{n / per:,.0f}" for n in b))
    median = statistics.median(differences)
    print(
        f"B-A {median:+10,.0f} ({median / (statistics.median(a) / per):+.1%}; paired median, "
        f"min {min(differences):+,.0f}, max {max(differences):+,.0f})"
    )


if __name__ == "__main__":
    main()
