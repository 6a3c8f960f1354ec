"""A deadline timer that is cheap to move later.

Setting and cancelling an event-loop timer costs about as much as a small request's own work,
so a deadline that moves with every request (a connection's idle time) or every wait (an
answer's silence) is not re-set each time. `at(due)` sets the timer only when none is set or
`due` is sooner; when it fires, `check(now)` acts on whatever is due and returns when to look
next (None: nothing to watch). A busy owner thus sets one timer per deadline's length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyTimer:
    """One loop timer behind a deadline that mostly moves later (see the module)."""

    __slots__ = ("_at", "_check", "_handle", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, check: Callable[[float], float | None]
    ) -> None:
        self._loop = loop
        self._check = check
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def at(self, due: float) -> None:
        """Have `check` called by `due` (loop time)."""
        if self._handle is None or due < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle, self._at = self._loop.call_at(due, self._fire), due

    def cancel(self) -> None:
        """Stop watching (until the next `at`)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Stop for good: cancel, and let go of `check`. Its owner usually holds this timer
        while `check` (a bound method) holds the owner; without this the pair would wait for
        the garbage collector instead of going when the owner is dropped."""
        self.cancel()
        self._check = _nothing

    def _fire(self) -> None:
        self._handle = None
        due = self._check(self._loop.time())
        if due is not None:
            self.at(due)


def _nothing(now: float) -> None:
    del now
