"""The guard of one provider: its circuit breaker, a breaker per egress, and the egress 429 limiter.

The attempt loop asks it whether a call may go out to this provider now (`admit`), which egress
a key leaves through and whether that egress is open (`note`, `egress_of`, `skips`,
`egress_blocked`), and what the key pool should learn from an outcome (`judge`, `judge_end`;
`forget` ends an admission that had no outcome). Judging is where healthy keys are
protected: a failure that looks
provider-wide (the breaker is not closed, or another key failed the same way since the
provider's last success) or egress-wide (an IP-level 429) reaches the pool as a neutral outcome,
so an outage or a dead proxy never ejects or marks keys.

Pure: no I/O; the time is passed in and randomness comes from the `random.Random` given.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol
from urllib.parse import urlsplit

from llmgateway.core.egress import DIRECT
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.resilience import (
    BreakerConfig,
    BreakerMode,
    BreakerState,
    CircuitBreaker,
    EgressLimiter,
    Verdict,
)

log = logging.getLogger("llmgateway.guard")


class EgressLimitConfig(Protocol):
    """When an egress's 429s are its own, not its keys' (`config.settings.EgressRateLimit` is
    one; see `EgressLimiter`)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def window_sec(self) -> float: ...
    @property
    def min_keys(self) -> int: ...
    @property
    def ratio(self) -> float: ...
    @property
    def cooldown_sec(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a call may not go out now, and when to try again (seconds)."""

    reason: Literal["circuit_open", "egress_open", "egress_rate_limited"]
    retry_after: float


class Guard:
    """Breakers and the 429 limiter of ONE provider instance (see the module docstring)."""

    def __init__(
        self,
        provider: str,
        breaker: BreakerConfig,
        egress_limit: EgressLimitConfig,
        rng: random.Random,
    ) -> None:
        self.provider = provider
        self._settings = breaker
        self._rng = rng
        self._breaker = CircuitBreaker(breaker, rng, trial_calls=breaker.trial_calls)
        self._egress: dict[str, CircuitBreaker] = {}
        self._limit = egress_limit
        self._limiter = EgressLimiter(
            window_sec=egress_limit.window_sec,
            min_keys=egress_limit.min_keys,
            ratio=egress_limit.ratio,
            cooldown_sec=egress_limit.cooldown_sec,
        )
        self._streak: set[int] = set()  # keys failing provider-side since the last success
        self._cut: set[str] = set()  # egresses that broke a stream since their last success
        self._closed_until: dict[str, float] = {}  # egress → when it may be tried again
        # key id → its egress as last leased, for keys leaving through a proxy only: with
        # 100,000 direct keys a full map would hold ~10 MB for nothing
        self._egress_of: dict[int, str] = {}
        self._watcher: Callable[[BreakerState], None] | None = None

    # -- the provider -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The provider breaker's state (the `llmgateway_circuit_breaker_state` value)."""
        return self._breaker.state

    def admit(self, now: float) -> Blocked | None:
        """None when a call may go to the provider now; pair it with `judge()` or `forget()`."""
        before = self._breaker.state
        allowed = self._breaker.allow(now)
        self._transition(before, now)
        if allowed:
            return None
        return Blocked("circuit_open", max(1.0, self._breaker.retry_after(now)))

    def open_to_calls(self, now: float) -> bool:
        """Whether `admit(now)` would let a call go to the provider (nothing is taken)."""
        return self._breaker.would_allow(now)

    def watch(self, watcher: Callable[[BreakerState], None]) -> None:
        """Call `watcher` with the provider breaker's state now and on every change (metrics)."""
        self._watcher = watcher
        watcher(self._breaker.state)

    def reset(self, now: float) -> None:
        """Close the provider's breaker and its egress breakers by hand (`llmgateway breaker
        reset PROVIDER`); egress 429 cooldowns run their course."""
        before = self._breaker.state
        self._breaker.reset()
        self._streak.clear()
        self._transition(before, now, by_hand=True)
        for egress, breaker in self._egress.items():
            was = breaker.state
            breaker.reset()
            self._egress_transition(egress, breaker, was, now)

    # -- egresses ---------------------------------------------------------------------------------

    def note(self, key_id: int, egress: str) -> None:
        """Remember which egress a key leaves through (so `skips()` can avoid it cheaply)."""
        if egress != DIRECT:
            self._egress_of[key_id] = egress
        elif key_id in self._egress_of:
            del self._egress_of[key_id]

    def egress_of(self, key_id: int) -> str:
        """The egress a key left through when last leased (`direct` for one never leased)."""
        return self._egress_of.get(key_id, DIRECT)

    def skips(self, key_id: int, now: float) -> bool:
        """Is this key's egress known to be closed at `now`? (A key never leased is taken to
        leave directly.)"""
        closed = self._closed_until
        return bool(closed) and closed.get(self._egress_of.get(key_id, DIRECT), 0.0) > now

    def egress_blocked(self, egress: str, now: float) -> Blocked | None:
        """None when a call may leave through `egress` now; pair it with `judge()`/`forget()`."""
        limited = self._limiter.blocked_until(egress, now) if self._limit.enabled else None
        if limited is not None:
            return Blocked("egress_rate_limited", max(1.0, limited - now))
        breaker = self._egress_breaker(egress)
        before = breaker.state
        allowed = breaker.allow(now)
        self._egress_transition(egress, breaker, before, now)
        if allowed:
            return None
        return Blocked("egress_open", max(1.0, breaker.retry_after(now)))

    def egress_states(self) -> dict[str, BreakerState]:
        """The state of every egress breaker seen so far, by egress id (may hold a password)."""
        return {egress: breaker.state for egress, breaker in self._egress.items()}

    # -- outcomes ---------------------------------------------------------------------------------

    def judge(self, egress: str, key_id: int, outcome: Outcome, now: float) -> Outcome:
        """Feed an admitted call's outcome to the breakers and the limiter; returns the outcome
        the key pool should learn (a neutral one when the failure is not the key's)."""
        provider_before = self._breaker.state
        breaker = self._egress_breaker(egress)
        egress_before = breaker.state
        learnt = outcome
        if outcome.ok:
            self._streak.clear()
            self._cut.discard(egress)
            self._breaker.record(Verdict.SUCCESS, now)
            breaker.record(Verdict.SUCCESS, now)
            self._limited(egress, key_id, False, now)
        elif outcome.blame is Blame.PROVIDER:
            wide = provider_before is not BreakerState.CLOSED or bool(self._streak - {key_id})
            if len(self._streak) < 2:
                self._streak.add(key_id)
            self._breaker.record(Verdict.FAILURE, now)
            breaker.record(Verdict.NEUTRAL, now)
            if wide or self._breaker.state is not BreakerState.CLOSED:
                learnt = _spared(outcome)
        elif outcome.blame is Blame.EGRESS:
            self._breaker.record(Verdict.NEUTRAL, now)
            breaker.record(Verdict.FAILURE, now)
        else:  # the key's fault or the client's: the far side answered, so the egress works
            self._breaker.record(Verdict.NEUTRAL, now)
            breaker.record(Verdict.SUCCESS, now)
            is_429 = outcome.reason is ErrorReason.RATE_LIMITED
            if self._limited(egress, key_id, is_429, now) and is_429:
                learnt = _spared(outcome)
        self._transition(provider_before, now)
        self._egress_transition(egress, breaker, egress_before, now)
        return learnt

    def judge_end(self, egress: str, outcome: Outcome) -> Outcome:
        """What the key pool should learn from how a streamed body ended.

        A body cut after the first byte is the key's (statistically) only when it is the first
        cut through its egress since that egress last served a success: a proxy dying or a
        provider dropping every stream at once cuts many streams together, and only the first
        of them is counted.
        """
        if outcome.ok:
            self._cut.discard(egress)
            return outcome
        if outcome.blame is not Blame.PROVIDER:
            return outcome
        if egress in self._cut:
            return _spared(outcome)
        self._cut.add(egress)
        return outcome

    def forget(self, egress: str | None, now: float) -> None:
        """An admitted call ended without an outcome (cancelled, or no key was found)."""
        self._breaker.record(Verdict.NEUTRAL, now)
        if egress is not None:
            self._egress_breaker(egress).record(Verdict.NEUTRAL, now)

    # -- internals --------------------------------------------------------------------------------

    def _limited(self, egress: str, key_id: int, is_429: bool, now: float) -> bool:
        """Record one answer through `egress`; True when its 429s look egress-wide."""
        if not self._limit.enabled:
            return False
        cooling = self._limiter.blocked_until(egress, now) is not None
        wide = self._limiter.record(egress, key_id, is_429, now)
        suspect = is_429 and self._limiter.suspect(egress, key_id, now)
        until = self._limiter.blocked_until(egress, now)
        if until is not None and not cooling:
            self._closed_until[egress] = until
            log.warning(
                "egress %s of provider %s is rate-limited as a whole: cooling it for %.0fs "
                "instead of its keys",
                egress_label(egress),
                self.provider,
                until - now,
            )
        return wide or suspect

    def _egress_breaker(self, egress: str) -> CircuitBreaker:
        breaker = self._egress.get(egress)
        if breaker is None:
            trials = self._settings.trial_calls
            breaker = self._egress[egress] = CircuitBreaker(
                self._settings, self._rng, trial_calls=trials
            )
        return breaker

    def _transition(self, before: BreakerState, now: float, *, by_hand: bool = False) -> None:
        after = self._breaker.state
        if after is before:
            return
        how = " by hand" if by_hand else ""
        wait = self._reopen_hint(self._breaker, now)
        log.warning(
            "circuit breaker of provider %s: %s -> %s%s%s",
            self.provider,
            before.name.lower(),
            after.name.lower(),
            how,
            wait,
        )
        if after is not BreakerState.OPEN:
            self._streak.clear()
        if self._watcher is not None:
            self._watcher(after)

    def _egress_transition(
        self, egress: str, breaker: CircuitBreaker, before: BreakerState, now: float
    ) -> None:
        after = breaker.state
        if after is before:
            return
        if after is BreakerState.OPEN:
            wait = breaker.retry_after(now)
            manual = self._settings.mode is BreakerMode.MANUAL_RESET
            self._closed_until[egress] = math.inf if manual else now + wait
        elif after is BreakerState.CLOSED and egress in self._closed_until:
            limited = self._limiter.blocked_until(egress, now)
            if limited is None:
                del self._closed_until[egress]
            else:
                self._closed_until[egress] = limited
        log.warning(
            "circuit breaker of egress %s (provider %s): %s -> %s%s",
            egress_label(egress),
            self.provider,
            before.name.lower(),
            after.name.lower(),
            self._reopen_hint(breaker, now),
        )

    def _reopen_hint(self, breaker: CircuitBreaker, now: float) -> str:
        if breaker.state is not BreakerState.OPEN:
            return ""
        if self._settings.mode is BreakerMode.MANUAL_RESET:
            return " (manual_reset: stays open until `llmgateway breaker reset`)"
        return f" (half-open in {breaker.retry_after(now):.1f}s)"


def _spared(outcome: Outcome) -> Outcome:
    """The same outcome, blamed on nobody: the key pool learns nothing from it."""
    return replace(outcome, blame=Blame.NOBODY)


def egress_label(egress: str) -> str:
    """An egress as logs and status show it: `direct`, or a proxy's scheme://host:port (no
    credentials)."""
    if egress == DIRECT:
        return DIRECT
    try:
        parts = urlsplit(egress)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    except ValueError:
        return "proxy"


@dataclass(slots=True)
class Excluded:
    """The keys one request must not get: those it tried, and those behind a closed egress.

    Passed to `KeyPool.acquire()` as its `exclude` collection; membership is O(1).
    """

    guard: Guard
    now: float
    tried: set[int] = field(default_factory=set)
    egresses: set[str] = field(default_factory=set)  # failed on our side during this request
    skipped: set[int] = field(default_factory=set)

    def __contains__(self, key_id: object) -> bool:
        if not isinstance(key_id, int):
            return False
        if key_id in self.tried or key_id in self.skipped:
            return True
        if not self.egresses and not self.guard._closed_until:  # nothing closed: the first try
            return False
        return self.guard.skips(key_id, self.now) or (
            bool(self.egresses) and self.guard.egress_of(key_id) in self.egresses
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.tried | self.skipped)

    def __len__(self) -> int:
        return len(self.tried) + len(self.skipped)
