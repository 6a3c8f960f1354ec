"""Pure resilience parts: backoff with full jitter, a retry budget, circuit breaker, egress limiter.

No I/O and no clock: methods that need the time take `now` (epoch seconds), randomness comes
from a `random.Random` given at construction.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from llmgateway.core.outcomes import Blame, Outcome


def full_jitter_backoff(
    attempt: int, base: float, factor: float, cap: float, rng: random.Random
) -> float:
    """AWS "full jitter": a uniform wait in [0, min(cap, base · factor^attempt)].

    `attempt` counts from 0 (the first retry).
    """
    if attempt < 0 or base < 0 or factor < 1 or cap < 0:
        raise ValueError(
            f"full_jitter_backoff needs attempt >= 0, base >= 0, factor >= 1 and cap >= 0; "
            f"got attempt={attempt}, base={base}, factor={factor}, cap={cap}"
        )
    try:
        ceiling = min(cap, base * factor**attempt)
    except OverflowError:
        ceiling = cap
    return rng.uniform(0.0, ceiling)


class RetryBudget:
    """Retries in flight stay under max(`min_concurrent`, `percent`% of active requests) (Envoy).

    Call `request_started()`/`request_finished()` around every client request, and
    `try_begin_retry()`/`end_retry()` around our own retries. A client's own SDK retry
    (`x-stainless-retry-count > 0`) is a retry too: `begin_client_retry()` counts it without
    refusing it, so it takes room from ours.
    """

    __slots__ = ("active", "min_concurrent", "percent", "retries")

    def __init__(self, percent: float = 20.0, min_concurrent: int = 3) -> None:
        if not 0 <= percent <= 100 or min_concurrent < 0:
            raise ValueError(
                f"RetryBudget needs 0 <= percent <= 100 and min_concurrent >= 0; "
                f"got percent={percent}, min_concurrent={min_concurrent}"
            )
        self.percent = percent
        self.min_concurrent = min_concurrent
        self.active = 0
        self.retries = 0

    @property
    def limit(self) -> int:
        """Retries allowed in flight now."""
        return max(self.min_concurrent, int(self.active * self.percent / 100))

    def request_started(self) -> None:
        """A client request began."""
        self.active += 1

    def request_finished(self) -> None:
        """A client request ended (answered, failed or cancelled)."""
        if self.active == 0:
            raise RuntimeError("RetryBudget.request_finished() without request_started()")
        self.active -= 1

    def try_begin_retry(self) -> bool:
        """Take a retry slot if the budget has room; pair a True with `end_retry()`."""
        if self.retries >= self.limit:
            return False
        self.retries += 1
        return True

    def begin_client_retry(self) -> None:
        """Count a client's own retry (always admitted); pair it with `end_retry()`."""
        self.retries += 1

    def end_retry(self) -> None:
        """Give a retry slot back."""
        if self.retries == 0:
            raise RuntimeError("RetryBudget.end_retry() without a retry in flight")
        self.retries -= 1


class BreakerMode(enum.StrEnum):
    """How an open breaker closes again: by itself after its backoff, or only by hand."""

    AUTO_RECOVERY = "auto_recovery"
    MANUAL_RESET = "manual_reset"


class BreakerBackoff(Protocol):
    """How long a breaker stays open (`config.settings.BreakerBackoff` is one)."""

    @property
    def base_duration_sec(self) -> float: ...
    @property
    def max_duration_sec(self) -> float: ...
    @property
    def factor(self) -> float: ...


class BreakerConfig(Protocol):
    """What a breaker reads of its settings (`config.settings.CircuitBreakerSettings` is one)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def mode(self) -> BreakerMode: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def backoff(self) -> BreakerBackoff: ...
    @property
    def jitter_sec(self) -> float: ...
    @property
    def trial_calls(self) -> int: ...


class BreakerState(enum.IntEnum):
    """The values of the `llmgateway_circuit_breaker_state` metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Verdict(enum.Enum):
    """What one call tells a breaker, when the caller has judged it already."""

    SUCCESS = "success"  # the far side works: resets the run of failures, closes half-open
    FAILURE = "failure"  # a failure of the far side: counts, re-opens half-open
    NEUTRAL = "neutral"  # says nothing of the far side: only frees a half-open trial slot


class CircuitBreaker:
    """A breaker for one provider or one egress: stops calls while the far side is down.

    CLOSED counts provider-side failures (PROVIDER and EGRESS blame) in a row; KEY, CLIENT and
    NOBODY outcomes are neutral (they neither count nor reset). `failure_threshold` in a row
    opens it for `backoff.base_duration_sec` plus a uniform jitter up to `jitter_sec`. Once that
    ends,
    HALF_OPEN admits up to `trial_calls` calls at once: the first success closes it, a failure
    re-opens it for the previous duration × `backoff.factor` (capped at `max_duration_sec`).
    In `manual_reset` mode an open breaker stays open until `reset()`. Disabled: always allows.
    Every call `allow()` admitted must be `record()`ed, a cancelled one as neutral.
    """

    __slots__ = (
        "_duration",
        "_failures",
        "_open_until",
        "_rng",
        "_settings",
        "_state",
        "_trials",
        "trial_calls",
    )

    def __init__(
        self, settings: BreakerConfig, rng: random.Random, *, trial_calls: int = 3
    ) -> None:
        self._settings = settings
        self._rng = rng
        self.trial_calls = trial_calls
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._duration = 0.0  # the last open duration, before jitter
        self._open_until = 0.0
        self._trials = 0

    @property
    def state(self) -> BreakerState:
        """The state as of the last call (OPEN turns HALF_OPEN on the first `allow()` after it)."""
        return self._state

    def allow(self, now: float) -> bool:
        """May a call go out now?"""
        if not self._settings.enabled or self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            manual = self._settings.mode is BreakerMode.MANUAL_RESET
            if manual or now < self._open_until:
                return False
            self._state, self._trials = BreakerState.HALF_OPEN, 0
        if self._trials >= self.trial_calls:
            return False
        self._trials += 1
        return True

    def would_allow(self, now: float) -> bool:
        """Whether `allow(now)` would let a call out, without taking a trial slot."""
        if not self._settings.enabled or self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            manual = self._settings.mode is BreakerMode.MANUAL_RESET
            return not manual and now >= self._open_until and self.trial_calls > 0
        return self._trials < self.trial_calls

    def record(self, outcome: Outcome | Verdict, now: float) -> None:
        """Learn from a call: its Outcome, or the Verdict the caller reached about it."""
        if not self._settings.enabled:
            return
        failed = _provider_side(outcome)
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
        if failed is None:
            return
        if not failed:
            self._failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._state, self._duration = BreakerState.CLOSED, 0.0
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._settings.failure_threshold:
                self._open(now)

    def _open(self, now: float) -> None:
        backoff = self._settings.backoff
        if self._duration == 0.0:
            self._duration = min(backoff.base_duration_sec, backoff.max_duration_sec)
        else:
            self._duration = min(self._duration * backoff.factor, backoff.max_duration_sec)
        jitter = self._rng.uniform(0.0, self._settings.jitter_sec)
        self._state, self._failures, self._trials = BreakerState.OPEN, 0, 0
        self._open_until = now + self._duration + jitter

    def reset(self) -> None:
        """Close the breaker by hand (the way out of `manual_reset` mode)."""
        self._state, self._failures, self._duration, self._trials = BreakerState.CLOSED, 0, 0.0, 0

    def retry_after(self, now: float) -> float:
        """Seconds a client should wait before trying again (for a 503's Retry-After)."""
        if not self._settings.enabled or self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.HALF_OPEN:
            return 1.0  # trial calls are out; their answers come soon
        if self._settings.mode is BreakerMode.MANUAL_RESET:
            return self._settings.backoff.base_duration_sec
        return max(0.0, self._open_until - now)


def _provider_side(outcome: Outcome | Verdict) -> bool | None:
    """True: a provider-side failure; False: a success; None: says nothing about the provider."""
    if isinstance(outcome, Verdict):
        return None if outcome is Verdict.NEUTRAL else outcome is Verdict.FAILURE
    if outcome.ok:
        return False
    if outcome.blame in (Blame.PROVIDER, Blame.EGRESS):
        return True
    return None


@dataclass(slots=True)
class _Window:
    limits: deque[tuple[float, int]] = field(default_factory=deque)  # (when, key_id) of 429s
    # other answers, counted per whole second: thousands per second must not cost an object
    # each (so they leave the window up to a second late)
    answers: deque[list[int]] = field(default_factory=deque)  # [second, count]
    others: int = 0  # the other answers in the window
    by_key: dict[int, int] = field(default_factory=dict)  # key_id → its 429s in the window
    blocked_until: float = 0.0

    @property
    def limited(self) -> int:
        """429s in the window."""
        return len(self.limits)

    @property
    def total(self) -> int:
        """Answers in the window."""
        return len(self.limits) + self.others

    def clear(self) -> None:
        self.limits.clear()
        self.answers.clear()
        self.others = 0
        self.by_key.clear()


class EgressLimiter:
    """Tells an egress-wide 429 (the IP is limited) from a key's own.

    When, within `window_sec`, at least `min_keys` distinct keys got a 429 through one egress
    and 429s are at least `ratio` of that egress's outcomes, the egress cools down for
    `cooldown_sec` and its 429s are not blamed on the keys.
    """

    __slots__ = ("_egresses", "cooldown_sec", "min_keys", "ratio", "window_sec")

    def __init__(
        self,
        *,
        window_sec: float = 10.0,
        min_keys: int = 5,
        ratio: float = 0.8,
        cooldown_sec: float = 30.0,
    ) -> None:
        self.window_sec = window_sec
        self.min_keys = min_keys
        self.ratio = ratio
        self.cooldown_sec = cooldown_sec
        self._egresses: dict[str, _Window] = {}

    def record(self, egress: str, key_id: int, is_429: bool, now: float) -> bool:
        """Note one outcome through `egress`; True means this 429 is egress-wide (not the key's)."""
        window = self._egresses.get(egress)
        if window is None:
            window = self._egresses[egress] = _Window()
        if window.blocked_until > now:
            return is_429
        self._prune(window, now)
        if not is_429:
            second = int(now)
            answers = window.answers
            if answers and answers[-1][0] == second:
                answers[-1][1] += 1
            else:
                answers.append([second, 1])
            window.others += 1
            return False
        window.limits.append((now, key_id))
        window.by_key[key_id] = window.by_key.get(key_id, 0) + 1
        wide = len(window.by_key) >= self.min_keys and window.limited >= self.ratio * window.total
        if wide:
            window.blocked_until = now + self.cooldown_sec
            window.clear()
        return wide

    def suspect(self, egress: str, key_id: int, now: float) -> bool:
        """Do the egress's recent 429s look IP-wide already (two keys or more, at `ratio`)?

        Lets the first 429s of an IP-wide limit go unblamed on their keys too; so do the 429s
        within `window_sec` after an egress cooldown ended (the limit is likely still there).
        Only a key's first 429 in the window: a key limited again is limited itself (behind
        an egress with fewer than `min_keys` keys, which is never proven wide, no key would
        ever cool down, and every request would ask every limited key again).
        """
        window = self._egresses.get(egress)
        if window is None or window.by_key.get(key_id, 0) > 1:
            return False
        if window.blocked_until > now - self.window_sec:
            return True
        self._prune(window, now)
        return len(window.by_key) >= 2 and window.limited >= self.ratio * window.total

    def _prune(self, window: _Window, now: float) -> None:
        start = now - self.window_sec
        limits = window.limits
        while limits and limits[0][0] <= start:
            _forget(window, limits.popleft()[1])
        answers = window.answers
        while answers and answers[0][0] + 1 <= start:
            window.others -= answers.popleft()[1]

    def blocked_until(self, egress: str, now: float) -> float | None:
        """When the egress's cooldown ends, or None when it is not cooling down."""
        window = self._egresses.get(egress)
        if window is None or window.blocked_until <= now:
            return None
        return window.blocked_until


def _forget(window: _Window, key_id: int) -> None:
    left = window.by_key[key_id] - 1
    if left:
        window.by_key[key_id] = left
    else:
        del window.by_key[key_id]
