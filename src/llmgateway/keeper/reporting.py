"""When and how the Keeper reports, pure: a long round's progress lines and a quiet idle Keeper.

- `ProgressGate`: a round's progress is reported at every 10 % of its due rows (rounds of
  `STEP_ROWS` rows or more) and at least every `interval` seconds while it runs, so a round of
  hours shows it is alive with its rate and ETA, and a round of a second says nothing.
- `RoundLog`: a round that probed something is logged at INFO; a round with nothing due at DEBUG,
  and the idle rounds are summed up at INFO at most every `IDLE_SUMMARY_SEC`.

No I/O and no clock: times are passed in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from llmgateway.keeper.summary import Progress, RoundSummary

STEP_ROWS = 500
"""Rounds with fewer due rows report by time only, not at every 10 %."""
IDLE_SUMMARY_SEC = 600.0
"""An idle Keeper says so at INFO at most this often."""


@dataclass(slots=True)
class ProgressGate:
    """Decides which progress snapshots of one round are reported (mutable, one per round)."""

    interval: float
    started: float
    last_step: int = 0
    last_report: float = -math.inf

    def __post_init__(self) -> None:
        self.last_report = self.started

    def due(self, progress: Progress, now: float) -> bool:
        """Whether to report `progress` at `now`: a new 10 % step, or `interval` since the
        last report while rows remain. Reporting it counts as reported."""
        step = progress.done * 10 // progress.due if progress.due >= STEP_ROWS else 0
        stepped = step > self.last_step
        late = now - self.last_report >= self.interval and progress.done < progress.due
        if not (stepped or late):
            return False
        self.last_step = max(self.last_step, step)
        self.last_report = now
        return True


def describe_progress(progress: Progress) -> str:
    """One progress line: `probed 1,870/100,000 (1.9 %), 2.1 rows/s, ETA 13 h 12 min; …`."""
    p = progress
    share = 100 * p.done / p.due if p.due else 100.0
    eta = p.eta
    line = f"probed {p.done:,}/{p.due:,} ({share:.1f} %), {p.rate:,.1f} rows/s"
    line += f", ETA {describe_seconds(eta)}" if eta is not None else ", ETA unknown yet"
    line += f"; {p.healthy:,} healthy, {p.failed:,} failed, {p.verifying:,} verifying"
    return line + f", {p.egress:,} egress faults"


def describe_round(summary: RoundSummary) -> str:
    """The round's summary line (also what `worker --once` prints)."""
    s = summary
    line = f"probe round: {s.due:,} due, {s.healthy:,} healthy, {s.failed:,} failed"
    line += f", {s.verifying:,} verifying, {s.egress:,} egress faults"
    line += f" ({s.requests:,} requests, {s.seconds:.1f} s)"
    left = max(s.due - s.probed, 0)
    if s.timed_out:
        line += f"; cut by task_timeout_sec for {s.timed_out} provider(s)"
    if s.stopped:
        line += "; stopped early"
    if left and (s.timed_out or s.stopped):
        line += f", {left:,} rows not probed stay due"
    return line


def describe_seconds(seconds: float) -> str:
    """A duration for people: `42 s`, `7 min 5 s`, `13 h 12 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


@dataclass(slots=True)
class RoundLog:
    """Decides how each finished probe round of the long run is logged (mutable, one per
    Keeper): `entry(summary, now)` is (level, message), or None for nothing at all."""

    idle_rounds: int = 0
    last_info: float = -math.inf

    def entry(self, summary: RoundSummary, now: float) -> tuple[int, str]:
        """The level and line for a finished round at `now`."""
        if summary.due or summary.probed:
            self.last_info = now
            self.idle_rounds = 0
            return logging.INFO, describe_round(summary)
        self.idle_rounds += 1
        if now - self.last_info >= IDLE_SUMMARY_SEC:
            line = f"keeper idle: nothing due in {self.idle_rounds} probe round(s)"
            if math.isfinite(self.last_info):
                line += f" over the last {describe_seconds(now - self.last_info)}"
            self.last_info = now
            self.idle_rounds = 0
            return logging.INFO, line
        return logging.DEBUG, describe_round(summary)
