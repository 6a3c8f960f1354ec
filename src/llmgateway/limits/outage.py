"""Failing open: when the limits backend cannot be asked, requests proceed without the limits.

After a failure the backend is left alone for `retry_unreachable_sec` (so a dead Redis costs
the request path nothing, not a timeout per request), and a warning is logged at most once per
`WARN_EVERY_SEC`. Each request let through this way is counted by the limiter
(`llmgateway_limiter_unavailable_total{provider}`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("llmgateway.limits")

WARN_EVERY_SEC = 60.0


class Unreachable(Exception):
    """The limits backend could not be asked (down, too slow, or it refused the call)."""


@dataclass(slots=True)
class Outage:
    """When the backend last failed, and when it was last reported."""

    retry_sec: float
    clock: Callable[[], float]
    warn_every: float = WARN_EVERY_SEC
    down_until: float = 0.0
    failures: int = 0
    _warned_at: float | None = None

    def down(self, now: float) -> bool:
        """Is the backend to be skipped at `now` (it failed less than `retry_sec` ago)?"""
        return now < self.down_until

    def failed(self, backend: str, error: BaseException) -> None:
        """Note a failure: skip the backend for a while, and warn unless warned recently."""
        now = self.clock()
        self.down_until = now + self.retry_sec
        self.failures += 1
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            return
        self._warned_at = now
        cause = error.__cause__ if isinstance(error, Unreachable) and error.__cause__ else error
        log.warning(
            "per-key limits: the %s backend is unreachable (%s); requests proceed without "
            "fleet-wide per-key limits (fail open), next try in %gs; "
            "%d failure(s) so far, next warning in %gs at the earliest",
            backend,
            type(cause).__name__,
            self.retry_sec,
            self.failures,
            self.warn_every,
        )
