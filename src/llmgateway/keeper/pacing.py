"""The pace of a provider's first checks, pure: an adaptive request rate (AIMD) with pauses.

Untested keys are first checked with the models-list call, which spends no tokens, as fast as the
provider lets us. The rate is additive-increase, multiplicative-decrease, like TCP's congestion
window: every answer that is fine adds `rate_step / rate` calls/s (about `rate_step` calls/s per
second at full pace), and a throttling answer (429 rate limited, 503) multiplies the rate by
`decrease_factor`, at most once per `CUT_WINDOW_SEC` so that one burst of 429s counts as one
signal. A `Retry-After` pauses every call of the provider until it has passed.

No I/O and no clock: every method takes `now` (a monotonic time in seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmgateway.config.settings import FirstCheckPolicy

CUT_WINDOW_SEC = 1.0
"""After a cut, throttling answers within this many seconds do not cut the rate again."""
BURST_SEC = 0.05
"""How much unused time a late caller may catch up on at once (slots missed while idle)."""


@dataclass(slots=True)
class AdaptiveRate:
    """One provider's rate of first checks (mutable, owned by one probe round)."""

    policy: FirstCheckPolicy
    rate: float = field(init=False)
    next_slot: float = -math.inf
    paused_until: float = -math.inf
    last_cut: float = -math.inf
    cuts: int = 0

    def __post_init__(self) -> None:
        self.rate = self.policy.start_rate

    def wait(self, now: float) -> float:
        """Seconds until the next call may go. 0 means it may go now, and its slot is taken."""
        ready = max(self.next_slot, self.paused_until)
        if now < ready:
            return ready - now
        self.next_slot = max(self.next_slot, now - BURST_SEC) + 1.0 / self.rate
        return 0.0

    def passed(self) -> None:
        """An answer that was fine (whatever it said about the key): grow the rate."""
        self.rate = min(self.policy.max_rate, self.rate + self.policy.rate_step / self.rate)

    def throttled(self, now: float, retry_after: float | None) -> None:
        """A throttling answer: cut the rate (once per window) and pause until `retry_after`
        seconds from `now` have passed, when the answer said so."""
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, now + retry_after)
        if now - self.last_cut >= CUT_WINDOW_SEC:
            self.last_cut = now
            self.cuts += 1
            self.rate = max(self.policy.min_rate, self.rate * self.policy.decrease_factor)
