"""The key pool: eligibility, selection, cooldowns, ejection, snapshot deltas (exact, seeded)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmgateway.config.settings import OutlierDetection, Selection
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import KeyEntry, Lease, StatusChange, Unavailable

T0 = 1_000_000.0
NO_JITTER = OutlierDetection(jitter_percent=0)

OK = Outcome(None, Blame.NONE, 200)
INVALID = Outcome(ErrorReason.INVALID_KEY, Blame.KEY, 401)
NO_QUOTA = Outcome(ErrorReason.NO_QUOTA, Blame.KEY, 429)
SERVER = Outcome(ErrorReason.SERVER_ERROR, Blame.PROVIDER, 500)
EGRESS = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
CLIENT = Outcome(ErrorReason.BAD_REQUEST, Blame.CLIENT, 400)


def limited(after: float | None = None) -> Outcome:
    return Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429, after)


def secret(key_id: int) -> str:
    return f"sk-test-{key_id:06d}-0123456789abcdef"


def entry(
    key_id: int,
    model: str = ALL_MODELS,
    status: KeyStatus = KeyStatus.VALID,
    cooldown_until: float | None = None,
) -> KeyEntry:
    return KeyEntry(key_id, secret(key_id), model, status, cooldown_until, "direct")


def make_pool(
    n: int = 3,
    *,
    shared: bool = True,
    models: tuple[str, ...] = ("a", "b"),
    selection: Selection = Selection.LEAST_INFLIGHT,
    outlier: OutlierDetection = NO_JITTER,
    status: KeyStatus = KeyStatus.VALID,
    seed: int = 1,
    serve_untested: bool = True,
) -> KeyPool:
    pool = KeyPool(
        "p",
        shared=shared,
        models=models,
        selection=selection,
        outlier=outlier,
        rng=random.Random(seed),
        serve_untested=serve_untested,
    )
    scopes = (ALL_MODELS,) if shared else models
    pool.load([entry(i, m, status) for i in range(n) for m in scopes], T0)
    return pool


def lease(
    pool: KeyPool, model: str = "a", now: float = T0, exclude: set[int] | None = None
) -> Lease:
    got = pool.acquire(model, now, exclude or set())
    assert isinstance(got, Lease), got
    return got


def use(pool: KeyPool, outcome: Outcome, now: float = T0, model: str = "a") -> StatusChange | None:
    return pool.release(lease(pool, model, now), outcome, now)


def use_key(
    pool: KeyPool, key_id: int, outcome: Outcome, now: float = T0, model: str = "a"
) -> StatusChange | None:
    others = {k for k in range(pool.size + 10) if k != key_id}
    got = lease(pool, model, now, others)
    assert got.key_id == key_id
    return pool.release(got, outcome, now)


def picks(pool: KeyPool, times: int, now: float = T0, model: str = "a") -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(times):
        got = lease(pool, model, now)
        seen[got.key_id] += 1
        pool.release(got, OK, now)
    return seen


# -- eligibility and selection ---------------------------------------------------------------


def test_untested_keys_serve_at_once_and_first_success_reports_valid() -> None:
    pool = make_pool(1, status=KeyStatus.UNTESTED)
    assert pool.state(0, "a", T0) == "untested"
    got = lease(pool)
    change = pool.release(got, OK, T0)
    assert change == StatusChange(0, ALL_MODELS, KeyStatus.VALID, None, None, 200)
    assert pool.state(0, "a", T0) == "healthy"
    assert use(pool, OK) is None  # already known valid: nothing to write


@pytest.mark.parametrize("selection", list(Selection))
def test_with_serve_untested_off_only_keys_found_healthy_serve(selection: Selection) -> None:
    pool = make_pool(3, status=KeyStatus.UNTESTED, selection=selection, serve_untested=False)
    assert pool.state(0, "a", T0) == "untested"
    assert pool.acquire("a", T0) == Unavailable("no_keys", None)
    # a probe finds key 1 valid (the store's row changes): it alone serves
    pool.apply([entry(1)], [], T0 + 1)
    assert picks(pool, 20, T0 + 1) == {1: 20}
    # a probe finding another key rate-limited: after its cooldown it serves too (it has been
    # classified; only "nothing known yet" is held back)
    pool.apply([entry(2, status=KeyStatus.RATE_LIMITED, cooldown_until=T0 + 10)], [], T0 + 1)
    assert set(picks(pool, 40, T0 + 2)) == {1}
    assert set(picks(pool, 40, T0 + 10)) == {1, 2}
    assert pool.state(0, "a", T0 + 10) == "untested"


def test_with_serve_untested_off_panic_never_picks_an_untested_key() -> None:
    pool = make_pool(2, status=KeyStatus.UNTESTED, serve_untested=False)
    pool.apply([entry(0)], [], T0)
    for _ in range(5):
        use_key(pool, 0, SERVER)
    assert pool.state(0, "a", T0) == "ejected"
    assert lease(pool, now=T0 + 1).key_id == 0  # ejected, but the one key found healthy
    assert pool.acquire("a", T0 + 1, {0}) == Unavailable("no_keys", 29)


def test_with_serve_untested_off_a_key_serves_only_the_models_it_was_found_healthy_for() -> None:
    pool = make_pool(1, shared=False, status=KeyStatus.UNTESTED, serve_untested=False)
    pool.apply([entry(0, "a")], [], T0)
    assert lease(pool, "a").key_id == 0
    assert pool.acquire("b", T0) == Unavailable("no_keys", None)
    assert make_pool(1, shared=False, status=KeyStatus.UNTESTED).acquire("b", T0) != (
        Unavailable("no_keys", None)
    )  # served at once with the setting on (the default)


def test_least_inflight_of_two_with_two_keys_alternates() -> None:
    pool = make_pool(2)
    held = [lease(pool) for _ in range(10)]
    assert Counter(h.key_id for h in held) == {0: 5, 1: 5}
    assert [pool.inflight(0), pool.inflight(1)] == [5, 5]


def test_selection_spreads_load_over_many_keys() -> None:
    pool = make_pool(1000)
    held = [lease(pool) for _ in range(3000)]
    loads = Counter(h.key_id for h in held)
    assert sum(loads.values()) == 3000
    assert max(loads.values()) <= 6  # two choices keep the busiest key close to the mean of 3
    assert len(loads) >= 990


def test_a_busy_key_is_avoided() -> None:
    pool = make_pool(2)
    busy = [lease(pool, exclude={1}) for _ in range(3)]
    assert {b.key_id for b in busy} == {0}
    assert [lease(pool).key_id for _ in range(3)] == [1, 1, 1]


def test_exclude_skips_tried_keys_and_none_left_is_no_keys() -> None:
    pool = make_pool(3)
    assert {lease(pool, exclude={0, 1}).key_id for _ in range(20)} == {2}
    assert pool.acquire("a", T0, {0, 1, 2}) == Unavailable("no_keys", None)


def test_round_robin_cycles_through_the_keys() -> None:
    pool = make_pool(3, selection=Selection.ROUND_ROBIN)
    order = [lease(pool).key_id for _ in range(7)]
    assert sorted(order[:3]) == [0, 1, 2]
    assert order[3:6] == order[:3]
    assert order[6] == order[0]


def test_round_robin_skips_ineligible_keys() -> None:
    pool = make_pool(3, selection=Selection.ROUND_ROBIN)
    use_key(pool, 1, INVALID)
    assert set(picks(pool, 10)) == {0, 2}


def test_sampling_finds_the_few_eligible_keys_in_a_large_pool() -> None:
    pool = make_pool(200)
    for key_id in range(195):
        use_key(pool, key_id, limited(60))
    assert set(picks(pool, 50)) <= {195, 196, 197, 198, 199}
    assert pool.counts(T0) == {(ALL_MODELS, "cooling"): 195, (ALL_MODELS, "healthy"): 5}


def test_lease_and_entry_reprs_hide_the_secret() -> None:
    pool = make_pool(1)
    got = lease(pool)
    assert got.secret == secret(0)
    assert secret(0) not in repr(got)
    assert secret(0) not in repr(entry(0))


# -- key faults ------------------------------------------------------------------------------


def test_invalid_key_is_never_selected_until_the_store_says_valid() -> None:
    pool = make_pool(3)
    change = use_key(pool, 0, INVALID)
    assert change == StatusChange(
        0, ALL_MODELS, KeyStatus.INVALID_KEY, ErrorReason.INVALID_KEY, None, 401
    )
    assert 0 not in picks(pool, 100)
    assert pool.state(0, "a", T0 + 10**6) == "invalid"
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0 + 5)
    assert pool.state(0, "a", T0 + 5) == "healthy"
    assert 0 in picks(pool, 30, T0 + 5)


def test_invalid_reported_once_per_key() -> None:
    pool = make_pool(2)
    held = [lease(pool, exclude={1}) for _ in range(2)]
    assert pool.release(held[0], INVALID, T0) is not None
    assert pool.release(held[1], INVALID, T0) is None
    assert pool.inflight(0) == 0


def test_rate_limit_cooldown_is_honoured_to_the_second() -> None:
    pool = make_pool(1)
    change = use(pool, limited(30))
    assert change == StatusChange(
        0, ALL_MODELS, KeyStatus.RATE_LIMITED, ErrorReason.RATE_LIMITED, T0 + 30, 429
    )
    assert pool.acquire("a", T0 + 29.5) == Unavailable("rate_limited", 0.5)
    assert lease(pool, now=T0 + 30).key_id == 0


def test_cooldown_deadline_never_moves_earlier() -> None:
    pool = make_pool(1)
    use(pool, limited(30))
    # a concurrent request's 429 with a shorter delay does not shorten it
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0 + 1)
    assert pool.acquire("a", T0 + 1) == Unavailable("rate_limited", 29)
    # the store's earlier deadline is ignored, a later one is taken
    pool.apply([entry(0, status=KeyStatus.RATE_LIMITED, cooldown_until=T0 + 10)], (), T0 + 2)
    assert pool.acquire("a", T0 + 2) == Unavailable("rate_limited", 28)
    pool.apply([entry(0, status=KeyStatus.RATE_LIMITED, cooldown_until=T0 + 50)], (), T0 + 3)
    assert pool.acquire("a", T0 + 30) == Unavailable("rate_limited", 20)
    assert lease(pool, now=T0 + 50).key_id == 0


def test_a_shorter_429_during_a_cooldown_changes_nothing() -> None:
    pool = make_pool(2)
    held = [lease(pool, exclude={1}) for _ in range(2)]
    assert pool.release(held[0], limited(30), T0) is not None
    assert pool.release(held[1], limited(5), T0 + 1) is None
    assert pool.state(0, "a", T0 + 29) == "cooling"
    assert pool.state(0, "a", T0 + 30) == "healthy"


def test_default_cooldown_doubles_per_429_in_a_row_and_is_capped() -> None:
    pool = make_pool(1)
    now, deadlines = T0, []
    for _ in range(5):
        change = use(pool, limited(), now)
        assert change is not None
        assert change.cooldown_until is not None
        deadlines.append(change.cooldown_until - now)
        now = change.cooldown_until
    assert deadlines == [60, 120, 240, 300, 300]
    use(pool, OK, now)
    change = use(pool, limited(), now)
    assert change is not None
    assert change.cooldown_until == now + 60


def test_all_rate_limited_gives_the_earliest_end() -> None:
    pool = make_pool(3)
    for key_id, wait in ((0, 40), (1, 10), (2, 25)):
        use_key(pool, key_id, limited(wait))
    assert pool.acquire("a", T0 + 4) == Unavailable("rate_limited", 6)
    assert pool.acquire("a", T0 + 12) == Lease(pool.size + 1, 1, secret(1), "direct", ALL_MODELS)


def test_no_quota_blocks_until_the_store_restores_it() -> None:
    pool = make_pool(1)
    change = use(pool, NO_QUOTA)
    assert change == StatusChange(
        0, ALL_MODELS, KeyStatus.NO_QUOTA, ErrorReason.NO_QUOTA, T0 + 3600, 429
    )
    assert pool.state(0, "a", T0 + 100) == "no_quota"
    assert pool.acquire("a", T0 + 100) == Unavailable("rate_limited", 3500)
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0 + 200)
    assert lease(pool, now=T0 + 200).key_id == 0


def test_no_quota_without_a_store_lasts_the_default() -> None:
    pool = make_pool(1)
    use(pool, NO_QUOTA)
    assert isinstance(pool.acquire("a", T0 + 3599), Unavailable)
    assert lease(pool, now=T0 + 3600).key_id == 0


def test_store_no_quota_without_deadline_blocks_until_restored() -> None:
    pool = make_pool(1)
    pool.apply([entry(0, status=KeyStatus.NO_QUOTA)], (), T0)
    assert pool.acquire("a", T0 + 10**7) == Unavailable("no_keys", None)
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0 + 10**7)
    assert lease(pool, now=T0 + 10**7).key_id == 0


def test_success_after_a_failure_reports_valid() -> None:
    pool = make_pool(1)
    use(pool, limited(1))
    assert use(pool, OK, T0 + 1) == StatusChange(0, ALL_MODELS, KeyStatus.VALID, None, None, 200)


def test_egress_and_client_faults_never_touch_the_key() -> None:
    pool = make_pool(1)
    for _ in range(20):
        assert use(pool, EGRESS) is None
        assert use(pool, CLIENT) is None
    assert pool.state(0, "a", T0) == "healthy"
    assert pool.ejected_count(T0) == 0


# -- statistical ejection --------------------------------------------------------------------


def test_consecutive_failures_eject_and_success_resets_the_count() -> None:
    pool = make_pool(4)
    for _ in range(4):
        assert use_key(pool, 0, SERVER) is None
    use_key(pool, 0, OK)
    for _ in range(4):
        assert use_key(pool, 0, SERVER) is None
    change = use_key(pool, 0, SERVER)
    assert change == StatusChange(
        0, ALL_MODELS, KeyStatus.SERVER_ERROR, ErrorReason.SERVER_ERROR, T0 + 30, 500
    )
    assert pool.state(0, "a", T0) == "ejected"
    assert 0 not in picks(pool, 50, T0 + 29)
    assert pool.state(0, "a", T0 + 30) == "healthy"
    assert 0 in picks(pool, 50, T0 + 30)


def test_ejection_grows_with_repeats_caps_and_decays() -> None:
    pool = make_pool(4)
    now, durations = T0, []
    for _ in range(12):
        for _ in range(4):
            use_key(pool, 0, SERVER, now)
        change = use_key(pool, 0, SERVER, now)
        assert change is not None
        assert change.cooldown_until is not None
        durations.append(change.cooldown_until - now)
        now = change.cooldown_until
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    now += 18 * 30  # healthy for 18 base periods: the multiplier has decayed away
    for _ in range(5):
        change = use_key(pool, 0, SERVER, now)
    assert change is not None
    assert change.cooldown_until == now + 30


def test_ejection_jitter_stays_within_the_percent() -> None:
    pool = make_pool(10, outlier=OutlierDetection(jitter_percent=10), seed=5)
    durations = set()
    for key_id in range(5):
        for _ in range(5):
            change = use_key(pool, key_id, SERVER)
        assert change is not None
        assert change.cooldown_until is not None
        durations.add(change.cooldown_until - T0)
    assert all(27 <= d <= 33 for d in durations)
    assert len(durations) == 5


def test_at_most_max_ejection_percent_are_ejected() -> None:
    pool = make_pool(5)  # 50 % of 5 → 2
    changes = [[use_key(pool, k, SERVER) for _ in range(5)][-1] for k in range(4)]
    assert [c is not None for c in changes] == [True, True, False, False]
    assert pool.ejected_count(T0) == 2
    assert pool.state(2, "a", T0) == pool.state(3, "a", T0) == "healthy"
    assert use_key(pool, 2, CLIENT) is None  # still served; a client fault keeps its count
    # once an ejection ends, the next failure of a key over the threshold ejects it
    assert use_key(pool, 2, SERVER, T0 + 30) is not None


def test_panic_ignores_ejections_when_nothing_else_is_eligible() -> None:
    pool = make_pool(2)
    for _ in range(5):
        use_key(pool, 0, SERVER)
    use_key(pool, 1, INVALID)
    assert pool.state(0, "a", T0) == "ejected"
    assert lease(pool, now=T0 + 1).key_id == 0
    assert pool.acquire("a", T0 + 1, {0}) == Unavailable("no_keys", 29)


def test_panic_does_not_override_facts() -> None:
    pool = make_pool(2)
    for _ in range(5):
        use_key(pool, 0, SERVER)
    use_key(pool, 1, limited(10))
    assert lease(pool, now=T0 + 1).key_id == 0  # ejected but otherwise fine beats waiting
    use_key(pool, 0, limited(100), T0 + 2)
    assert pool.acquire("a", T0 + 3) == Unavailable("rate_limited", 7)


def test_a_passing_probe_in_the_store_unejects() -> None:
    pool = make_pool(4)
    for _ in range(5):
        use_key(pool, 0, SERVER)
    pool.apply([entry(0, status=KeyStatus.SERVER_ERROR, cooldown_until=T0 + 30)], (), T0 + 1)
    assert pool.state(0, "a", T0 + 1) == "ejected"  # its own report read back changes nothing
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0 + 2)
    assert pool.state(0, "a", T0 + 2) == "healthy"
    assert pool.ejected_count(T0 + 2) == 0


# -- scopes ----------------------------------------------------------------------------------


def test_per_model_429_does_not_block_other_models() -> None:
    pool = make_pool(1, shared=False)
    change = use(pool, limited(30), model="a")
    assert change is not None
    assert change.model == "a"
    assert pool.acquire("a", T0 + 1) == Unavailable("rate_limited", 29)
    assert lease(pool, "b", T0 + 1).scope == "b"


def test_shared_429_blocks_every_model() -> None:
    pool = make_pool(1, shared=True)
    use(pool, limited(30), model="a")
    assert pool.acquire("b", T0 + 1) == Unavailable("rate_limited", 29)
    assert pool.acquire("never-heard-of", T0 + 1) == Unavailable("rate_limited", 29)


def test_invalid_is_key_level_even_per_model() -> None:
    pool = make_pool(1, shared=False)
    change = use(pool, INVALID, model="a")
    assert change is not None
    assert change.model == "a"
    assert pool.acquire("b", T0) == Unavailable("no_keys", None)


def test_scopes_are_the_configured_models_only() -> None:
    """A requested name is resolved to a configured entry before it reaches the pool: asking
    for anything else is a bug, and store rows of models not configured here make no scope."""
    pool = make_pool(2, shared=False)
    with pytest.raises(KeyError):
        pool.acquire("unlisted", T0)
    pool.apply([KeyEntry(7, "sk-seven-000000000000", "unlisted", KeyStatus.VALID, None)], [], T0)
    assert pool.size == 3
    assert {scope for scope, _ in pool.counts(T0)} == {"a", "b"}
    assert pool.state(7, "a", T0) == "untested"


def test_an_unexplained_401_ejects_the_key_at_once_and_asks_for_a_probe() -> None:
    pool = make_pool(2, shared=False)
    doubted = Outcome(ErrorReason.AUTH_REFUSED, Blame.KEY, 401)
    got = lease(pool, "a")
    change = pool.release(got, doubted, T0)
    assert change is not None
    assert (change.status, change.model) == (KeyStatus.AUTH_REFUSED, "a")
    assert pool.state(got.key_id, "b", T0) == "ejected"
    assert lease(pool, "a").key_id != got.key_id


def test_no_model_blocks_only_that_model_per_model_and_nothing_when_shared() -> None:
    no_model = Outcome(ErrorReason.NO_MODEL, Blame.KEY, 404)
    pool = make_pool(1, shared=False)
    change = use(pool, no_model, model="a")
    assert change is not None
    assert change.status is KeyStatus.NO_MODEL
    assert pool.acquire("a", T0 + 10**6) == Unavailable("no_keys", None)
    assert lease(pool, "b").key_id == 0
    shared = make_pool(1, shared=True)
    assert use(shared, no_model) is None
    assert lease(shared).key_id == 0


# -- snapshot and delta ----------------------------------------------------------------------


def test_delta_removed_key_leaves_at_once_and_new_key_joins() -> None:
    pool = make_pool(3)
    pool.apply([entry(7)], [1], T0)
    assert pool.size == 3
    assert set(picks(pool, 60)) == {0, 2, 7}


def test_release_of_a_removed_key_is_harmless() -> None:
    pool = make_pool(2)
    got = lease(pool, exclude={1})
    pool.apply([], [0], T0)
    assert pool.release(got, INVALID, T0) is None
    pool.apply([entry(0)], [], T0)
    assert pool.inflight(0) == 0
    assert pool.state(0, "a", T0) == "healthy"


def test_full_load_replaces_keys_and_keeps_local_counters() -> None:
    pool = make_pool(3)
    held = lease(pool, exclude={1, 2})
    use_key(pool, 1, limited(30))
    pool.load([entry(0), entry(1), entry(5, status=KeyStatus.UNTESTED)], T0 + 1)
    assert pool.size == 3
    assert pool.inflight(0) == 1
    assert pool.state(1, "a", T0 + 1) == "cooling"
    assert pool.state(2, "a", T0 + 1) is None
    assert pool.state(5, "a", T0 + 1) == "untested"
    assert pool.release(held, OK, T0 + 1) is None
    assert pool.inflight(0) == 0


def test_store_invalid_and_restore() -> None:
    pool = make_pool(2)
    pool.apply([entry(0, status=KeyStatus.NO_ACCESS)], (), T0)
    assert set(picks(pool, 20)) == {1}
    pool.apply([entry(0, status=KeyStatus.VALID)], (), T0)
    assert set(picks(pool, 40)) == {0, 1}


def test_store_statistical_status_restricts_nothing() -> None:
    pool = make_pool(1)
    pool.apply([entry(0, status=KeyStatus.TIMEOUT, cooldown_until=T0 + 300)], (), T0)
    assert lease(pool).key_id == 0


def test_double_release_is_harmless() -> None:
    pool = make_pool(1)
    got = lease(pool)
    assert pool.inflight(0) == 1
    assert pool.release(got, limited(10), T0) is not None
    assert pool.release(got, limited(100), T0) is None
    assert pool.inflight(0) == 0
    assert lease(pool, now=T0 + 10).key_id == 0


def test_counts_by_scope_and_state() -> None:
    pool = make_pool(6, shared=False, models=("a",), status=KeyStatus.UNTESTED)
    use_key(pool, 0, OK)
    use_key(pool, 1, INVALID)
    use_key(pool, 2, limited(30))
    use_key(pool, 3, NO_QUOTA)
    for _ in range(5):
        use_key(pool, 4, SERVER)
    assert pool.counts(T0) == {
        ("a", "healthy"): 1,
        ("a", "invalid"): 1,
        ("a", "cooling"): 1,
        ("a", "no_quota"): 1,
        ("a", "ejected"): 1,
        ("a", "untested"): 1,
    }


@pytest.mark.parametrize("selection", list(Selection))
def test_a_cooled_key_comes_back_by_itself(selection: Selection) -> None:
    pool = make_pool(2, selection=selection)
    use_key(pool, 0, limited(5))
    assert set(picks(pool, 10, T0 + 4)) == {1}
    assert set(picks(pool, 20, T0 + 5)) == {0, 1}
