"""The WARNING line for a key taken out of service, once per change, and never a flood.

`TurnLog.report()` is given what a status write changed (`KeyTurn`s, found in the write's own
transaction by `llmgateway.store.turns`) and logs each at WARNING on `llmgateway.keys`: the key
masked, its fingerprint and where the files hold it, so an operator goes straight from the log
line to the file (`llmgateway keys show FINGERPRINT`). Past `per_window` turns in a window
(100 a minute) the rest are counted instead, and one summary line per window says how many of
each status were not logged one by one. `TurnBudget` decides, on an injected clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from llmgateway.records import KeyTurn

PER_WINDOW = 100
WINDOW_SEC = 60.0


@dataclass(slots=True)
class TurnBudget:
    """How many turns are logged one by one: the first `per_window` of a window of
    `window_sec` (which starts at the first turn after the last one ended); the others are held
    and handed back, counted by status, once their window has ended. Pure: time is given."""

    per_window: int = PER_WINDOW
    window_sec: float = WINDOW_SEC
    _start: float | None = None
    _spent: int = 0
    _held: Counter[str] = field(default_factory=Counter)

    def record(self, now: float, status: str) -> tuple[bool, dict[str, int]]:
        """One turn at `now`: whether to log it one by one, and the counts held from a window
        that ended before `now` (empty: none), to log first."""
        summary = self.close(now)
        if self._start is None:
            self._start = now
        if self._spent < self.per_window:
            self._spent += 1
            return True, summary
        self._held[status] += 1
        return False, summary

    def close(self, now: float) -> dict[str, int]:
        """The counts held from the window, when it has ended by `now` (then a new window
        starts at the next turn); empty otherwise."""
        if self._start is None or now < self._start + self.window_sec:
            return {}
        held = dict(sorted(self._held.items()))
        self._start, self._spent = None, 0
        self._held.clear()
        return held

    @property
    def due_at(self) -> float | None:
        """When the held counts are due (the end of the window), or None when none are held."""
        if self._start is None or not self._held:
            return None
        return self._start + self.window_sec


class TurnLog:
    """Logs the turns of one process (see the module). `clock` is epoch seconds; with a
    running event loop, a summary is also written when its window ends without another turn."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        budget: TurnBudget | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.clock = clock
        self.budget = budget or TurnBudget()
        self.log = logger or logging.getLogger("llmgateway.keys")
        self._timer: asyncio.TimerHandle | None = None

    def report(self, turns: Sequence[KeyTurn]) -> None:
        """Log `turns` (just committed), within the budget."""
        if not turns:
            return
        now = self.clock()
        for turn in turns:
            logged, summary = self.budget.record(now, turn.status)
            self._summarize(summary)
            if logged:
                self._one(turn)
        self._arm(now)

    @property
    def pending_summary(self) -> asyncio.TimerHandle | None:
        """The timer set to write the summary of the current window, if one is held."""
        return self._timer

    def flush(self) -> None:
        """Write the summary of a window that has ended, if any."""
        self._timer = None
        now = self.clock()
        self._summarize(self.budget.close(now))
        self._arm(now)  # a timer a little early (another clock) tries again

    def _one(self, turn: KeyTurn) -> None:
        where = turn.source or "file:line not recorded yet (the next sync records it)"
        code = f", upstream {turn.status_code}" if turn.status_code is not None else ""
        models = ", ".join(turn.models)
        self.log.warning(
            "key %s (fingerprint %s) of %s at %s is now %s for %s%s",
            turn.masked,
            turn.fingerprint,
            turn.provider,
            where,
            turn.status,
            models,
            code,
            extra={"key": turn.fingerprint, "source": turn.source, "key_status": turn.status},
        )

    def _summarize(self, held: Mapping[str, int]) -> None:
        if not held:
            return
        total = sum(held.values())
        counts = ", ".join(f"{n} {status}" for status, n in held.items())
        self.log.warning(
            "%d more keys went out of service in the last %gs than were logged one by one "
            "(%s); `llmgateway keys list --status STATUS` lists them",
            total,
            self.budget.window_sec,
            counts,
        )

    def _arm(self, now: float) -> None:
        due = self.budget.due_at
        if due is None or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the summary comes with the next turn after the window
            return
        self._timer = loop.call_later(max(0.0, due - now), self.flush)
