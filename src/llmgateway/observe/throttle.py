"""How often a repeated event may write a log line: the first at once, then a summary at most
once per period with the count of those held back.

`Throttle` is pure bookkeeping: the caller passes the time (any monotonic clock) and writes the
lines; it also arranges for `summary` to be called at `summary_due()` when events are held, so
the count of a burst that ends is not lost until the next event.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Throttle:
    """At most one line per `every_sec` for one kind of event.

    - `offer(now)`: an event happened. An int means "write its line now", and is the number of
      earlier events held back and not yet reported (fold them into the line); None means
      "hold it" (it is counted in `held`).
    - `summary(now)`: the number of held events to report in a summary line now (0: nothing to
      write, or not due yet).

    A summary line counts as a line: the next event within `every_sec` of it is held too.
    """

    every_sec: float
    held: int = 0
    last_line_at: float | None = None

    def offer(self, now: float) -> int | None:
        """Whether an event at `now` gets its own line (see the class docstring)."""
        last = self.last_line_at
        if last is None or now - last >= self.every_sec:
            earlier, self.held, self.last_line_at = self.held, 0, now
            return earlier
        self.held += 1
        return None

    def summary_due(self) -> float | None:
        """When the held events may be reported (None: none are held)."""
        if not self.held or self.last_line_at is None:
            return None
        return self.last_line_at + self.every_sec

    def summary(self, now: float) -> int:
        """The held events to report in a summary line at `now` (0 when none, or too early);
        they are then no longer held."""
        due = self.summary_due()
        if due is None or now < due:
            return 0
        count, self.held, self.last_line_at = self.held, 0, now
        return count
