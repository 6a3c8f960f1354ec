"""Stateful property tests: the pool and the breaker against a plain model, with advancing `now`.

The pool machine keeps its own record of every fact it fed the pool (invalid, cooldowns, quota,
failures, ejections learnt from the returned StatusChange) and checks each selection against it:
a key that is invalid, cooling or out of quota is never selected, an ejected one only when
nothing else is eligible (panic), and "unavailable" only when truly nothing is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from llmgateway.config.settings import (
    BreakerBackoff,
    BreakerMode,
    CircuitBreakerSettings,
    OutlierDetection,
    Selection,
)
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import KeyEntry, Lease, StatusChange, Unavailable
from llmgateway.core.resilience import BreakerState, CircuitBreaker

T0 = 1_700_000_000.0
MODELS = ("a", "b")
OUTLIER = OutlierDetection(consecutive_failures=2)  # else 30 s × n up to 300 s, ±10 %, 50 %
STEPS = st.sampled_from([0.0, 0.5, 1.0, 5.0, 29.0, 30.0, 61.0, 120.0, 300.0, 3600.0])
OUTCOMES = {
    "ok": Outcome(None, Blame.NONE, 200),
    "invalid": Outcome(ErrorReason.INVALID_KEY, Blame.KEY, 401),
    "no_quota": Outcome(ErrorReason.NO_QUOTA, Blame.KEY, 429),
    "server": Outcome(ErrorReason.SERVER_ERROR, Blame.PROVIDER, 500),
    "timeout": Outcome(ErrorReason.TIMEOUT, Blame.PROVIDER),
    "egress": Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS),
    "client": Outcome(ErrorReason.BAD_REQUEST, Blame.CLIENT, 400),
}


@dataclass
class KeyModel:
    invalid_in: set[str] = field(default_factory=set)
    cooldown: dict[str, float] = field(default_factory=dict)
    blocked: dict[str, float] = field(default_factory=dict)
    rate_limits: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[int, KeyModel] = {}
        self.leases: list[Lease] = []
        self.now = T0

    @initialize(
        shared=st.booleans(),
        n=st.integers(1, 6),
        seed=st.integers(0, 2**32 - 1),
        round_robin=st.booleans(),
    )
    def setup(self, shared: bool, n: int, seed: int, round_robin: bool) -> None:
        self.shared = shared
        self.pool = KeyPool(
            "p",
            shared=shared,
            models=MODELS,
            selection=Selection.ROUND_ROBIN if round_robin else Selection.LEAST_INFLIGHT,
            outlier=OUTLIER,
            rng=random.Random(seed),
        )
        self.next_id = n
        self.pool.load([e for k in range(n) for e in self.entries(k)], self.now)
        self.keys = {k: KeyModel() for k in range(n)}

    def entries(self, key_id: int) -> list[KeyEntry]:
        scopes = (ALL_MODELS,) if self.shared else MODELS
        return [
            KeyEntry(key_id, f"sk-{key_id:08d}-xyz", s, KeyStatus.UNTESTED, None) for s in scopes
        ]

    def scope(self, model: str) -> str:
        return ALL_MODELS if self.shared else model

    def held(self, key_id: int) -> int:
        return sum(lease.key_id == key_id for lease in self.leases)

    def eligible(self, key_id: int, scope: str, exclude: set[int], *, panic: bool) -> bool:
        m = self.keys[key_id]
        return not (
            m.invalid_in
            or (m.ejected_until > self.now and not panic)
            or m.cooldown.get(scope, 0.0) > self.now
            or m.blocked.get(scope, 0.0) > self.now
            or key_id in exclude
        )

    def ejected(self) -> int:
        return sum(m.ejected_until > self.now for m in self.keys.values())

    # -- rules -----------------------------------------------------------------------------

    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(model=st.sampled_from(MODELS), exclude=st.sets(st.integers(0, 12), max_size=3))
    def acquire(self, model: str, exclude: set[int]) -> None:
        scope = self.scope(model)
        got = self.pool.acquire(model, self.now, exclude)
        normal = [k for k in self.keys if self.eligible(k, scope, exclude, panic=False)]
        panic = [k for k in self.keys if self.eligible(k, scope, exclude, panic=True)]
        if isinstance(got, Unavailable):
            assert not panic, (got, panic)
            assert got.retry_after is None or got.retry_after > 0
            return
        assert got.scope == scope
        assert got.key_id in (normal or panic), (got.key_id, normal, panic)
        self.leases.append(got)

    @precondition(lambda self: self.leases)
    @rule(
        index=st.integers(0, 50),
        kind=st.sampled_from([*OUTCOMES, "429", "429", "server", "server", "server"]),
        retry_after=st.none() | st.sampled_from([0.5, 1.0, 30.0, 90.0]),
        twice=st.booleans(),
    )
    def release(self, index: int, kind: str, retry_after: float | None, twice: bool) -> None:
        lease = self.leases.pop(index % len(self.leases))
        if kind == "429":
            outcome = Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429, retry_after)
        else:
            outcome = OUTCOMES[kind]
        change = self.pool.release(lease, outcome, self.now)
        if twice:
            assert self.pool.release(lease, outcome, self.now) is None
        m = self.keys.get(lease.key_id)
        if m is None:
            assert change is None
            return
        self.learn(m, lease.scope, kind, outcome, change)

    @precondition(lambda self: self.keys)
    @rule(data=st.data(), times=st.integers(1, 3))
    def one_key_fails_in_a_row(self, data: st.DataObject, times: int) -> None:
        key_id = data.draw(st.sampled_from(sorted(self.keys)))
        others = set(self.keys) - {key_id}
        for _ in range(times):
            before = len(self.leases)
            self.acquire("a", others)
            if len(self.leases) == before or self.leases[-1].key_id != key_id:
                return
            self.release(len(self.leases) - 1, "server", None, twice=False)

    def learn(
        self, m: KeyModel, scope: str, kind: str, outcome: Outcome, change: StatusChange | None
    ) -> None:
        now = self.now
        if kind == "ok":
            m.failures, m.rate_limits[scope] = 0, 0
        elif kind == "invalid":
            m.invalid_in.add(scope)
        elif kind == "429":
            m.rate_limits[scope] = m.rate_limits.get(scope, 0) + 1
            delay = outcome.retry_after
            if delay is None:
                delay = min(60.0 * 2 ** (m.rate_limits[scope] - 1), 300.0)
            m.cooldown[scope] = max(m.cooldown.get(scope, 0.0), now + delay)
        elif kind == "no_quota":
            m.blocked[scope] = max(m.blocked.get(scope, 0.0), now + 3600.0)
        elif kind in ("server", "timeout"):
            m.failures += 1
            if m.failures < OUTLIER.consecutive_failures or m.ejected_until > now:
                assert change is None
                return
            if self.ejected() >= int(len(self.keys) * 0.5):
                assert change is None
                return
            times = max(0, m.ejections - int((now - m.ejected_until) / 30.0)) + 1
            base = min(30.0 * times, 300.0)
            assert change is not None
            assert change.cooldown_until is not None
            until = change.cooldown_until
            assert base * 0.9 - 1e-6 <= until - now <= base * 1.1 + 1e-6
            m.ejections, m.failures, m.ejected_until = times, 0, until

    @precondition(lambda self: any(m.invalid_in for m in self.keys.values()))
    @rule(data=st.data())
    def store_restores_an_invalid_key(self, data: st.DataObject) -> None:
        key_id = data.draw(st.sampled_from(sorted(k for k, m in self.keys.items() if m.invalid_in)))
        m = self.keys[key_id]
        scope = data.draw(st.sampled_from(sorted(m.invalid_in)))
        entry = KeyEntry(key_id, f"sk-{key_id:08d}-xyz", scope, KeyStatus.VALID, None)
        self.pool.apply([entry], (), self.now)
        m.invalid_in.discard(scope)
        m.blocked[scope] = 0.0
        if m.ejected_until > self.now:
            m.ejected_until, m.failures = self.now, 0

    @precondition(lambda self: self.keys)
    @rule(data=st.data(), model=st.sampled_from(MODELS), wait=st.sampled_from([5.0, 60.0, 400.0]))
    def store_rate_limits(self, data: st.DataObject, model: str, wait: float) -> None:
        key_id = data.draw(st.sampled_from(sorted(self.keys)))
        scope = self.scope(model)
        until = self.now + wait
        entry = KeyEntry(key_id, f"sk-{key_id:08d}-xyz", scope, KeyStatus.RATE_LIMITED, until)
        self.pool.apply([entry], (), self.now)
        m = self.keys[key_id]
        m.invalid_in.discard(scope)
        m.blocked[scope] = 0.0
        m.cooldown[scope] = max(m.cooldown.get(scope, 0.0), until)

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def store_removes_a_key(self, data: st.DataObject) -> None:
        key_id = data.draw(st.sampled_from(sorted(self.keys)))
        self.pool.apply([], [key_id], self.now)
        del self.keys[key_id]
        # the ejections ending soonest end now if the share went over the cap
        cap = int(len(self.keys) * OUTLIER.max_ejection_percent / 100)
        ejected = sorted(
            (m.ejected_until, k) for k, m in self.keys.items() if m.ejected_until > self.now
        )
        for _, k in ejected[: max(0, len(ejected) - cap)]:
            self.keys[k].ejected_until = self.now

    @rule()
    def store_adds_a_key(self) -> None:
        key_id, self.next_id = self.next_id, self.next_id + 1
        self.pool.apply(self.entries(key_id), (), self.now)
        self.keys[key_id] = KeyModel()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def inflight_matches_the_leases_and_is_never_negative(self) -> None:
        for key_id in getattr(self, "keys", {}):
            assert self.pool.inflight(key_id) == self.held(key_id) >= 0

    @invariant()
    def ejections_stay_under_the_cap(self) -> None:
        if not hasattr(self, "pool"):
            return
        count = self.pool.ejected_count(self.now)
        assert count == self.ejected()
        assert count <= int(self.pool.size * OUTLIER.max_ejection_percent / 100)

    @invariant()
    def states_follow_the_facts(self) -> None:
        for key_id, m in getattr(self, "keys", {}).items():
            for model in MODELS:
                scope = self.scope(model)
                state = self.pool.state(key_id, model, self.now)
                if m.invalid_in:
                    assert state == "invalid"
                elif m.blocked.get(scope, 0.0) > self.now:
                    assert state == "no_quota"
                elif m.cooldown.get(scope, 0.0) > self.now:
                    assert state == "cooling"  # a deadline never moved earlier
                elif m.ejected_until > self.now:
                    assert state == "ejected"
                else:
                    assert state in ("healthy", "untested")


TestPool = PoolMachine.TestCase
TestPool.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


class BreakerMachine(RuleBasedStateMachine):
    """The breaker never leaves OPEN before its backoff ends (nor at all in manual mode)."""

    @initialize(manual=st.booleans(), threshold=st.integers(1, 4), seed=st.integers(0, 2**16))
    def setup(self, manual: bool, threshold: int, seed: int) -> None:
        self.manual = manual
        self.breaker = CircuitBreaker(
            CircuitBreakerSettings(
                enabled=True,
                mode=BreakerMode.MANUAL_RESET if manual else BreakerMode.AUTO_RECOVERY,
                failure_threshold=threshold,
                backoff=BreakerBackoff(base_duration_sec=30, max_duration_sec=200, factor=2),
                jitter_sec=5,
            ),
            random.Random(seed),
        )
        self.now = T0
        self.open_until: float | None = None
        self.trials = 0

    def observe(self, before: BreakerState, *, reset: bool = False) -> None:
        after = self.breaker.state
        if after is BreakerState.OPEN and before is not BreakerState.OPEN:
            wait = self.breaker.retry_after(self.now)
            assert (30 <= wait <= 205) or self.manual
            self.open_until = self.now + wait
        if before is BreakerState.OPEN and after is not BreakerState.OPEN and not reset:
            assert not self.manual
            assert self.open_until is not None
            assert self.now >= self.open_until
        if after is not BreakerState.HALF_OPEN:
            self.trials = 0

    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        before = self.breaker.state
        allowed = self.breaker.allow(self.now)
        still_open = self.manual or (self.open_until is not None and self.now < self.open_until)
        if before is BreakerState.OPEN and still_open:
            assert not allowed
            assert self.breaker.state is BreakerState.OPEN
        if self.breaker.state is BreakerState.HALF_OPEN and allowed:
            self.trials += 1
            assert self.trials <= self.breaker.trial_calls
        if before is BreakerState.CLOSED:
            assert allowed
        self.observe(before)

    @rule(kind=st.sampled_from(["fail", "ok", "neutral"]))
    def record(self, kind: str) -> None:
        before = self.breaker.state
        outcome = {
            "fail": Outcome(ErrorReason.SERVER_ERROR, Blame.PROVIDER, 503),
            "ok": Outcome(None, Blame.NONE, 200),
            "neutral": Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429),
        }[kind]
        self.breaker.record(outcome, self.now)
        if before is BreakerState.HALF_OPEN:
            self.trials = max(0, self.trials - 1)
            if kind == "fail":
                assert self.breaker.state is BreakerState.OPEN
        self.observe(before)

    @rule()
    def reset(self) -> None:
        before = self.breaker.state
        self.breaker.reset()
        assert self.breaker.state is BreakerState.CLOSED
        self.observe(before, reset=True)

    @invariant()
    def retry_after_is_sane(self) -> None:
        if hasattr(self, "breaker"):
            assert self.breaker.retry_after(self.now) >= 0


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
