"""Backoff, retry budget, circuit breaker and egress limiter (exact, seeded, explicit `now`)."""

from __future__ import annotations

import random

import pytest

from llmgateway.config.settings import BreakerBackoff, BreakerMode, CircuitBreakerSettings
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.resilience import (
    BreakerState,
    CircuitBreaker,
    EgressLimiter,
    RetryBudget,
    Verdict,
    full_jitter_backoff,
)

T0 = 2_000_000.0

# -- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0)]
)
def test_full_jitter_is_uniform_below_the_capped_exponential(attempt: int, ceiling: float) -> None:
    rng, mirror = random.Random(3), random.Random(3)
    waits = [full_jitter_backoff(attempt, 0.1, 2.0, 1.0, rng) for _ in range(500)]
    assert waits == [mirror.uniform(0.0, ceiling) for _ in range(500)]
    assert all(0.0 <= w <= ceiling for w in waits)
    assert max(waits) > 0.9 * ceiling  # the whole range is used, not just a corner


def test_full_jitter_survives_huge_attempts() -> None:
    rng = random.Random(1)
    assert 0.0 <= full_jitter_backoff(100_000, 1.0, 3.0, 5.0, rng) <= 5.0


@pytest.mark.parametrize(
    "args", [(-1, 0.1, 2.0, 1.0), (0, -0.1, 2.0, 1.0), (0, 0.1, 0.5, 1.0), (0, 0.1, 2.0, -1.0)]
)
def test_full_jitter_rejects_nonsense(args: tuple[int, float, float, float]) -> None:
    with pytest.raises(ValueError, match="full_jitter_backoff needs"):
        full_jitter_backoff(*args, random.Random(0))


# -- retry budget ----------------------------------------------------------------------------


def test_budget_allows_the_minimum_when_quiet() -> None:
    budget = RetryBudget(percent=20, min_concurrent=3)
    budget.request_started()
    assert [budget.try_begin_retry() for _ in range(4)] == [True, True, True, False]
    budget.end_retry()
    assert budget.try_begin_retry() is True


def test_budget_grows_with_active_requests() -> None:
    budget = RetryBudget(percent=20, min_concurrent=3)
    for _ in range(100):
        budget.request_started()
    assert budget.limit == 20
    assert sum(budget.try_begin_retry() for _ in range(30)) == 20
    for _ in range(50):
        budget.request_finished()
    assert budget.limit == 10
    assert budget.try_begin_retry() is False  # 20 in flight already


def test_client_retries_take_room_from_ours() -> None:
    budget = RetryBudget(percent=20, min_concurrent=3)
    for _ in range(3):
        budget.begin_client_retry()
    assert budget.try_begin_retry() is False
    budget.end_retry()
    assert budget.try_begin_retry() is True


def test_budget_misuse_is_a_clear_error() -> None:
    budget = RetryBudget()
    with pytest.raises(RuntimeError, match="without a retry in flight"):
        budget.end_retry()
    with pytest.raises(RuntimeError, match="without request_started"):
        budget.request_finished()
    with pytest.raises(ValueError, match="percent"):
        RetryBudget(percent=150)


# -- circuit breaker -------------------------------------------------------------------------

FAIL = Outcome(ErrorReason.SERVER_ERROR, Blame.PROVIDER, 500)
EGRESS = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
OK = Outcome(None, Blame.NONE, 200)
KEY = Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429)


def breaker_settings(**changes: object) -> CircuitBreakerSettings:
    base: dict[str, object] = {
        "enabled": True,
        "failure_threshold": 3,
        "backoff": BreakerBackoff(base_duration_sec=30, max_duration_sec=100, factor=2),
        "jitter_sec": 5,
    }
    base.update(changes)
    return CircuitBreakerSettings.model_validate(base)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state now, read through a call: mypy would keep an asserted `.state` narrowed
    across the calls that change it."""
    return breaker.state


def open_breaker(breaker: CircuitBreaker, now: float = T0) -> None:
    for _ in range(3):
        assert breaker.allow(now)
        breaker.record(FAIL, now)
    assert state_of(breaker) is BreakerState.OPEN


def test_state_values_match_the_metric() -> None:
    assert [int(s) for s in (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)] == [
        0,
        1,
        2,
    ]


def test_disabled_breaker_always_allows() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(enabled=False), random.Random(0))
    for _ in range(100):
        breaker.record(FAIL, T0)
    assert breaker.allow(T0)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.retry_after(T0) == 0.0


def test_consecutive_provider_failures_open_it() -> None:
    breaker = CircuitBreaker(breaker_settings(), random.Random(0))
    breaker.record(FAIL, T0)
    breaker.record(EGRESS, T0)
    breaker.record(OK, T0)  # a success resets the run
    breaker.record(FAIL, T0)
    breaker.record(KEY, T0)  # key faults are neutral: neither count nor reset
    breaker.record(Verdict.FAILURE, T0)
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record(EGRESS, T0)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow(T0)


def test_open_until_backoff_plus_jitter_then_half_open_trials() -> None:
    breaker = CircuitBreaker(breaker_settings(), random.Random(9))
    open_breaker(breaker)
    jitter = random.Random(9).uniform(0.0, 5.0)
    reopen = T0 + 30 + jitter
    assert breaker.retry_after(T0) == pytest.approx(30 + jitter)
    assert not breaker.allow(reopen - 0.001)
    assert state_of(breaker) is BreakerState.OPEN
    assert [breaker.allow(reopen) for _ in range(4)] == [True, True, True, False]
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.retry_after(reopen) == 1.0
    breaker.record(KEY, reopen)  # a neutral answer frees its trial slot
    assert breaker.allow(reopen)
    breaker.record(OK, reopen)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow(reopen)


def test_verdicts_a_caller_reached_count_like_the_outcomes_they_stand_for() -> None:
    breaker = CircuitBreaker(breaker_settings(), random.Random(9))
    for verdict in (Verdict.FAILURE, Verdict.FAILURE, Verdict.SUCCESS, Verdict.FAILURE):
        breaker.record(verdict, T0)  # the success reset the run: one failure counted
    breaker.record(Verdict.NEUTRAL, T0)
    breaker.record(Verdict.FAILURE, T0)
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record(Verdict.FAILURE, T0)
    assert state_of(breaker) is BreakerState.OPEN
    reopen = T0 + breaker.retry_after(T0)
    assert [breaker.allow(reopen) for _ in range(4)] == [True, True, True, False]
    breaker.record(Verdict.NEUTRAL, reopen)  # frees its trial slot, decides nothing
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow(reopen)
    breaker.record(Verdict.SUCCESS, reopen)
    assert state_of(breaker) is BreakerState.CLOSED


def test_half_open_failure_reopens_longer_up_to_the_cap() -> None:
    rng = random.Random(4)
    mirror = random.Random(4)
    breaker = CircuitBreaker(breaker_settings(), rng)
    open_breaker(breaker)
    now = T0 + 30 + mirror.uniform(0.0, 5.0)
    durations = []
    for _ in range(4):
        assert breaker.allow(now)
        breaker.record(FAIL, now)
        assert state_of(breaker) is BreakerState.OPEN
        jitter = mirror.uniform(0.0, 5.0)
        durations.append(breaker.retry_after(now) - jitter)
        now += breaker.retry_after(now)
    assert durations == pytest.approx([60, 100, 100, 100])
    assert breaker.allow(now)
    breaker.record(OK, now)
    open_breaker(breaker, now)  # closed again: the next opening starts from the base
    assert breaker.retry_after(now) == pytest.approx(30 + mirror.uniform(0.0, 5.0))


def test_manual_reset_stays_open_until_reset() -> None:
    breaker = CircuitBreaker(breaker_settings(mode=BreakerMode.MANUAL_RESET), random.Random(0))
    open_breaker(breaker)
    assert not breaker.allow(T0 + 10**6)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.retry_after(T0 + 10**6) == 30
    breaker.reset()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow(T0 + 10**6)


# -- egress limiter --------------------------------------------------------------------------


def test_many_keys_429_through_one_egress_is_egress_wide() -> None:
    limiter = EgressLimiter()
    verdicts = [limiter.record("proxy-1", k, True, T0 + k) for k in range(5)]
    assert verdicts == [False, False, False, False, True]
    assert limiter.blocked_until("proxy-1", T0 + 4) == T0 + 34
    assert limiter.record("proxy-1", 9, True, T0 + 5) is True  # still egress-wide
    assert limiter.record("proxy-1", 9, False, T0 + 5) is False
    assert limiter.blocked_until("direct", T0 + 5) is None
    assert limiter.blocked_until("proxy-1", T0 + 34) is None


def test_one_key_429ing_often_is_the_key() -> None:
    limiter = EgressLimiter()
    assert not any(limiter.record("direct", 1, True, T0 + i * 0.1) for i in range(50))


def test_429s_among_many_successes_are_the_keys() -> None:
    limiter = EgressLimiter()
    for i in range(10):
        limiter.record("direct", 100 + i, False, T0)
    assert not any(limiter.record("direct", k, True, T0 + 1) for k in range(10))
    # 10 × 429 of 20 outcomes is 50 %, under 80 %


def test_old_outcomes_leave_the_window() -> None:
    limiter = EgressLimiter(window_sec=10)
    for k in range(4):
        limiter.record("direct", k, True, T0)
    assert limiter.record("direct", 4, True, T0 + 10) is False  # the first four have aged out
    for k in range(5, 8):
        limiter.record("direct", k, True, T0 + 11)
    assert limiter.record("direct", 8, True, T0 + 12) is True
