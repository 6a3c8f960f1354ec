"""Two commits of the gateway, interleaved, in one command.

    .venv/bin/python bench/compare.py BASE_REF NEW_REF [--rounds 5] [--duration 3] [--workers 1]
        [--cells chat-1,chat-64,chat-256,stream-1,stream-64,ttfb-1] [--aa] [--extra-config YAML]

Each ref is checked out in a detached git worktree in a temporary folder (removed at the end,
also on Ctrl-C). Its gateway runs on this venv's Python and dependencies but that tree's code
(PYTHONPATH=<tree>/src, which is checked to win over the installed package before anything
runs). One fake upstream serves both gateways (A = BASE_REF, B = NEW_REF), which run side by
side with identical configs (100 keys, a SQLite file each; `--extra-config` merges a YAML
mapping, or a YAML file, into both). Each round runs every cell on A and on B back to back,
alternating which goes first, and each cell is measured as in bench/run.py: `chat-N` and
`stream-N` by wrk at concurrency N (1 s warm-up, then `--duration` s), `ttfb-1` by the lean
client (time to the first streamed body byte, 400 requests one at a time).

Reading the table: "A" and "B" are each side's median over rounds; "B-A" is the median over
rounds of the paired difference (B minus A within one round), "B-A %" the median of the same
difference relative to A, and "min"/"max" the smallest and largest paired difference. Lower is
better for p50/p99, higher for rate. With `--aa` a second gateway of BASE_REF runs as well and
each cell also runs on A against A' (alternating too): that table, in the same format, is this
sitting's noise. A B-A smaller than the A-A spread is no finding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from run import (
    TOKEN,
    TTFB_REQUESTS,
    Load,
    differences,
    ensure_wrk,
    fake_upstream,
    gateway,
    measure,
    median_of,
    print_aligned,
    source_env,
    ttfb,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent
KINDS = ("chat", "stream", "ttfb")
METRICS = (("rps", "rate/s"), ("p50", "p50 ms"), ("p99", "p99 ms"))


@dataclass(frozen=True, slots=True)
class Cell:
    """One load: `chat` or `stream` through wrk, or `ttfb` through the lean client."""

    kind: str
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.concurrency}"


Runs = dict[Cell, tuple[list[Load], list[Load]]]
"""Per cell, the loads of side A and of side B, one per round, in round order."""


def parse_cells(text: str) -> list[Cell]:
    cells = []
    for name in text.split(","):
        kind, _, number = name.strip().partition("-")
        if kind not in KINDS or not number.isdigit() or int(number) < 1:
            raise SystemExit(f"--cells: {name!r} is not one of chat-N, stream-N, ttfb-1")
        if kind == "ttfb" and number != "1":
            raise SystemExit("--cells: the TTFB client runs one request at a time: ttfb-1")
        cells.append(Cell(kind, int(number)))
    return cells


def extra_config(text: str | None) -> dict[str, Any]:
    """The `--extra-config` mapping: the YAML file it names, else the YAML text itself."""
    if not text:
        return {}
    path = Path(text)
    found = yaml.safe_load(path.read_text() if path.is_file() else text)
    if not isinstance(found, dict):
        raise SystemExit("--extra-config: expected a YAML mapping (or a file holding one)")
    return found


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(ref: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{ref!r} names no commit in {REPO}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(commit: str, folder: Path) -> Iterator[Path]:
    """A detached worktree of `commit` in `folder`, removed at the end; yields its src folder
    once `python -m llmgateway` with `source_env` is seen to import the code from it."""
    try:
        git("worktree", "add", "--detach", str(folder), commit)
        src = folder / "src"
        probe = "import llmgateway; print(llmgateway.__file__)"
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=source_env(src),
            cwd=folder,
            capture_output=True,
            text=True,
        )
        imported = done.stdout.strip()
        if done.returncode != 0 or not Path(imported).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"{commit[:12]}: llmgateway from {imported or done.stderr}, not {src}")
        yield src
    finally:
        if folder.exists():
            removed = subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                capture_output=True,
                text=True,
            )
            if removed.returncode != 0:
                print(f"could not remove {folder}: {removed.stderr.strip()}", file=sys.stderr)


def measure_cell(cell: Cell, wrk: str | None, folder: Path, url: str, seconds: float) -> Load:
    if cell.kind == "ttfb":
        p50, p99 = asyncio.run(ttfb(url, TOKEN, TTFB_REQUESTS))
        return Load(float("nan"), p50, p99, 0)
    stream = cell.kind == "stream"
    return measure(wrk, folder, url, TOKEN, stream, cell.concurrency, seconds)


def table(runs: Runs) -> list[list[str]]:
    rows = [["cell", "metric", "A", "B", "B-A", "B-A %", "min", "max", "errors A/B"]]
    for cell, (a, b) in runs.items():
        errors = f"{sum(x.errors for x in a)}/{sum(x.errors for x in b)}"
        for field, label in METRICS[1:] if cell.kind == "ttfb" else METRICS:
            spec = ",.0f" if field == "rps" else ".3f"
            diffs = differences(b, a, field)
            before = [getattr(x, field) for x in a]
            percent = [
                100 * d / v if v else float("nan") for d, v in zip(diffs, before, strict=True)
            ]
            rows.append(
                [
                    cell.name,
                    label,
                    format(median_of(a, field), spec),
                    format(median_of(b, field), spec),
                    format(statistics.median(diffs), "+" + spec),
                    format(statistics.median(percent), "+.1f") + "%",
                    format(min(diffs), "+" + spec),
                    format(max(diffs), "+" + spec),
                    "" if errors == "0/0" else errors,
                ]
            )
            errors = ""
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("base", metavar="BASE_REF")
    parser.add_argument("new", metavar="NEW_REF")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every cell per side")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="processes per gateway")
    parser.add_argument("--cells", default="chat-1,chat-64,chat-256,stream-1,stream-64,ttfb-1")
    parser.add_argument("--aa", action="store_true", help="also BASE against BASE: the noise")
    parser.add_argument("--extra-config", metavar="YAML", help="settings merged into both")
    args = parser.parse_args()
    if args.rounds < 1 or args.workers < 1 or args.duration <= 0:
        parser.error("--rounds, --workers and --duration must be positive")
    cells = parse_cells(args.cells)
    extra = extra_config(args.extra_config)
    sides = {"A": resolve(args.base), "B": resolve(args.new)}
    if args.aa:
        sides["A'"] = sides["A"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds like Ctrl-C
    wrk = ensure_wrk()
    pairs = [("A", "B"), ("A", "A'")] if args.aa else [("A", "B")]
    runs: dict[tuple[str, str], Runs] = {p: {c: ([], []) for c in cells} for p in pairs}
    try:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compare-")))
            trees = {
                commit: stack.enter_context(checkout(commit, folder / f"tree-{commit[:12]}"))
                for commit in dict.fromkeys(sides.values())
            }
            base = stack.enter_context(fake_upstream())
            urls = {}
            for side, commit in sides.items():
                config = write_config(folder, base, 100, tag=side.replace("'", "2"), extra=extra)
                urls[side] = stack.enter_context(gateway(config, args.workers, trees[commit]))[0]
            for turn in range(args.rounds):
                print(f"round {turn + 1}/{args.rounds}", file=sys.stderr)
                for cell in cells:
                    for pair in pairs:
                        order = pair if turn % 2 == 0 else pair[::-1]
                        found = {
                            side: measure_cell(cell, wrk, folder, urls[side], args.duration)
                            for side in order
                        }
                        for side, loads in zip(pair, runs[pair][cell], strict=True):
                            loads.append(found[side])
    except KeyboardInterrupt:
        sys.exit(130)
    generator = "wrk" if wrk else "Python load generator (wrk missing)"
    settings = yaml.safe_dump(extra, default_flow_style=True).strip() if extra else "none"
    print(
        f"load: {generator}, {args.duration:g} s per run, {args.rounds} rounds, "
        f"{args.workers} worker(s) per gateway; cores: {os.cpu_count()}; extra config: {settings}"
    )
    a, b = f"{args.base} ({sides['A'][:12]})", f"{args.new} ({sides['B'][:12]})"
    titles = {
        ("A", "B"): f"A = {a}, B = {b}",
        ("A", "A'"): f"noise: A = {a}, B = a second gateway of the same tree",
    }
    for pair in pairs:
        print(f"\n{titles[pair]}")
        print_aligned(table(runs[pair]), left=2)


if __name__ == "__main__":
    main()
