"""The guard: provider and egress breakers, egress-wide 429s, and who the key pool blames."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgateway.config.settings import (
    BreakerBackoff,
    BreakerMode,
    CircuitBreakerSettings,
    EgressRateLimit,
    OutlierDetection,
    Selection,
)
from llmgateway.core.guard import Blocked, Excluded, Guard, egress_label
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import KeyEntry, Unavailable
from llmgateway.core.resilience import BreakerState

T0 = 1_700_000_000.0
OK = Outcome(None, Blame.NONE, 200)
DOWN = Outcome(ErrorReason.SERVICE_UNAVAILABLE, Blame.PROVIDER, 503)
REFUSED = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
LIMITED = Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429, 5.0)
INVALID = Outcome(ErrorReason.INVALID_KEY, Blame.KEY, 401)
PROXY_A = "http://user:secret-pass@10.0.0.1:3128"
PROXY_B = "http://10.0.0.2:3128"


def breaker(**overrides: object) -> CircuitBreakerSettings:
    values: dict[str, object] = {
        "enabled": True,
        "failure_threshold": 3,
        "backoff": BreakerBackoff(base_duration_sec=10, max_duration_sec=40, factor=2),
        "jitter_sec": 0,
        "trial_calls": 1,
    }
    values.update(overrides)
    return CircuitBreakerSettings.model_validate(values)


def make(cb: CircuitBreakerSettings | None = None, limit: EgressRateLimit | None = None) -> Guard:
    limit = limit or EgressRateLimit(window_sec=10, min_keys=3, ratio=0.8, cooldown_sec=20)
    return Guard("openai", cb or breaker(), limit, random.Random(1))


def state_of(guard: Guard) -> BreakerState:
    """The state now, read through a call: mypy would keep an asserted `.state` narrowed
    across the calls that change it."""
    return guard.state


def call(guard: Guard, egress: str, key_id: int, outcome: Outcome, now: float) -> Outcome:
    """One admitted call through `egress`, as the attempt loop makes it."""
    assert guard.admit(now) is None
    assert guard.egress_blocked(egress, now) is None
    return guard.judge(egress, key_id, outcome, now)


def test_a_provider_wide_outage_blames_at_most_the_first_key() -> None:
    guard = make(breaker(enabled=False))
    learnt = [call(guard, "direct", key, DOWN, T0) for key in range(10)]
    assert learnt[0].blame is Blame.PROVIDER
    assert all(o.blame is Blame.NOBODY for o in learnt[1:])
    assert all(o.reason is ErrorReason.SERVICE_UNAVAILABLE for o in learnt)


def test_one_failing_key_among_healthy_ones_is_blamed_every_time() -> None:
    guard = make(breaker(enabled=False))
    for _ in range(5):
        assert call(guard, "direct", 1, OK, T0).blame is Blame.NONE
        assert call(guard, "direct", 7, DOWN, T0).blame is Blame.PROVIDER
        assert call(guard, "direct", 7, DOWN, T0).blame is Blame.PROVIDER


def test_breaker_opens_fails_fast_then_half_open_trial_closes_it() -> None:
    guard = make()
    seen: list[BreakerState] = []
    guard.watch(seen.append)
    for key in range(3):
        call(guard, "direct", key, DOWN, T0)
    assert state_of(guard) is BreakerState.OPEN
    closed = guard.admit(T0 + 1)
    assert closed == Blocked("circuit_open", 9.0)
    assert guard.admit(T0 + 9.9) is not None
    assert guard.admit(T0 + 10) is None  # the one trial call
    assert state_of(guard) is BreakerState.HALF_OPEN
    assert guard.admit(T0 + 10) is not None  # trial_calls = 1
    assert guard.judge("direct", 5, DOWN, T0 + 10).blame is Blame.NOBODY  # not the key's
    assert state_of(guard) is BreakerState.OPEN
    assert guard.admit(T0 + 29) is not None  # 20 s now (10 × 2)
    assert guard.admit(T0 + 30) is None
    assert guard.judge("direct", 5, OK, T0 + 30) == OK
    assert state_of(guard) is BreakerState.CLOSED
    expected = [BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN]
    assert seen == [*expected, BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_key_and_client_faults_never_move_the_provider_breaker() -> None:
    guard = make()
    for key in range(20):
        call(guard, "direct", key, INVALID, T0)
        call(guard, "direct", key, Outcome(ErrorReason.BAD_REQUEST, Blame.CLIENT, 400), T0)
    assert state_of(guard) is BreakerState.CLOSED


def test_manual_reset_stays_open_until_reset() -> None:
    guard = make(breaker(mode=BreakerMode.MANUAL_RESET))
    for key in range(3):
        call(guard, "direct", key, DOWN, T0)
    assert guard.admit(T0 + 10_000) is not None
    guard.reset(T0 + 10_000)
    assert state_of(guard) is BreakerState.CLOSED
    assert guard.admit(T0 + 10_000) is None


def test_a_dead_proxy_opens_its_egress_breaker_only() -> None:
    guard = make()
    for key in range(3):
        guard.note(key, PROXY_A)
        assert call(guard, PROXY_A, key, REFUSED, T0).blame is Blame.EGRESS
    assert state_of(guard) is BreakerState.CLOSED  # the provider is fine
    assert guard.egress_blocked(PROXY_A, T0 + 1) == Blocked("egress_open", 9.0)
    assert guard.skips(0, T0 + 1)
    assert guard.skips(2, T0 + 1)
    assert guard.egress_blocked(PROXY_B, T0 + 1) is None
    guard.judge(PROXY_B, 9, OK, T0 + 1)
    guard.note(9, PROXY_B)
    assert not guard.skips(9, T0 + 1)
    # after the backoff a trial goes through the proxy; its success closes the breaker
    assert not guard.skips(0, T0 + 10)
    assert guard.egress_blocked(PROXY_A, T0 + 10) is None
    guard.judge(PROXY_A, 0, OK, T0 + 10)
    assert guard.egress_states()[PROXY_A] is BreakerState.CLOSED
    assert not guard.skips(0, T0 + 10)


def test_egress_wide_429s_cool_the_egress_not_the_keys() -> None:
    guard = make()
    first = call(guard, PROXY_A, 1, LIMITED, T0)
    assert first.blame is Blame.KEY  # one key's 429 is that key's, as far as we know
    assert call(guard, PROXY_A, 2, LIMITED, T0 + 0.1).blame is Blame.NOBODY  # suspect already
    assert call(guard, PROXY_A, 3, LIMITED, T0 + 0.2).blame is Blame.NOBODY  # egress-wide
    for key in (1, 2, 3):
        guard.note(key, PROXY_A)
        assert guard.skips(key, T0 + 1)
    closed = guard.egress_blocked(PROXY_A, T0 + 1)
    assert closed is not None
    assert closed.reason == "egress_rate_limited"
    assert closed.retry_after == pytest.approx(19.2)
    assert guard.egress_blocked(PROXY_B, T0 + 1) is None
    assert guard.egress_blocked(PROXY_A, T0 + 20.2) is None  # cooled down


def test_a_key_limited_again_is_limited_itself_behind_an_egress_never_proven_wide() -> None:
    """Two keys behind an egress that needs three to be proven wide: each one's first 429 is
    spared (suspect), its second is its own (else neither would ever cool down)."""
    guard = make()
    assert call(guard, "direct", 1, LIMITED, T0).blame is Blame.KEY
    assert call(guard, "direct", 2, LIMITED, T0 + 0.1).blame is Blame.NOBODY  # suspect
    assert call(guard, "direct", 1, LIMITED, T0 + 0.2).blame is Blame.KEY
    assert call(guard, "direct", 2, LIMITED, T0 + 0.3).blame is Blame.KEY
    assert guard.egress_blocked("direct", T0 + 1) is None  # never wide with two keys


def test_scattered_429s_among_successes_stay_the_keys() -> None:
    guard = make()
    for step in range(30):
        now = T0 + step * 0.1
        call(guard, "direct", 100 + step, OK, now)
        call(guard, "direct", 200 + step, OK, now)
        call(guard, "direct", 300 + step, OK, now)
        assert call(guard, "direct", step % 5, LIMITED, now).blame is Blame.KEY
    assert guard.egress_blocked("direct", T0 + 3) is None


def test_egress_limit_can_be_turned_off() -> None:
    guard = make(limit=EgressRateLimit(enabled=False))
    learnt = [call(guard, "direct", key, LIMITED, T0) for key in range(10)]
    assert all(o.blame is Blame.KEY for o in learnt)
    assert guard.egress_blocked("direct", T0) is None


def test_excluded_holds_tried_skipped_and_keys_behind_closed_egresses() -> None:
    guard = make()
    for key in range(3):
        guard.note(key, PROXY_A)
        call(guard, PROXY_A, key, REFUSED, T0)
    guard.note(5, PROXY_B)
    excluded = Excluded(guard, T0 + 1, tried={7})
    excluded.skipped.add(8)
    assert {0, 2, 7, 8} <= {k for k in range(50) if k in excluded}
    assert {5, 42}.isdisjoint({k for k in range(50) if k in excluded})
    excluded.egresses.add(PROXY_B)
    assert 5 in excluded
    assert sorted(excluded) == [7, 8]
    assert len(excluded) == 2


def test_egress_label_never_shows_proxy_credentials() -> None:
    assert egress_label(PROXY_A) == "http://10.0.0.1:3128"
    assert egress_label("direct") == "direct"


def pool_of(n: int) -> KeyPool:
    pool = KeyPool(
        "openai",
        shared=True,
        models=["m"],
        selection=Selection.LEAST_INFLIGHT,
        outlier=OutlierDetection(consecutive_failures=2, max_ejection_percent=100),
        rng=random.Random(3),
    )
    entries = [KeyEntry(k, f"sk-key-{k:012d}", ALL_MODELS, KeyStatus.VALID, None) for k in range(n)]
    pool.load(entries, T0)
    return pool


@settings(max_examples=60, deadline=None)
@given(
    order=st.lists(st.integers(0, 9), min_size=2, max_size=200).filter(lambda o: o[0] != o[1]),
    enabled=st.booleans(),
    threshold=st.integers(1, 20),
)
def test_an_outage_in_any_order_ejects_and_marks_no_key(
    order: list[int], enabled: bool, threshold: int
) -> None:
    """Property: whatever order the keys fail in during a provider-wide outage (it shows as soon
    as two keys failed), the pool (ejecting after 2 failures in a row, up to 100 %) ejects none
    and the store hears nothing."""
    guard = make(breaker(enabled=enabled, failure_threshold=threshold))
    pool = pool_of(10)
    now = T0
    for key_id in order:
        now += 0.05
        if guard.admit(now) is not None:
            continue
        lease = pool.acquire("m", now, exclude=[k for k in range(10) if k != key_id])
        assert not isinstance(lease, Unavailable)
        assert guard.egress_blocked(lease.egress, now) is None
        learnt = guard.judge(lease.egress, lease.key_id, DOWN, now)
        assert pool.release(lease, learnt, now) is None
    assert pool.ejected_count(now) == 0
    assert all(pool.state(k, "m", now) in ("healthy", "untested") for k in range(10))
