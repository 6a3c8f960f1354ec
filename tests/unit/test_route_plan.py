"""Routes, pure: resolving a request's model, the attempt plan (weights, tiers, eligibility,
each target once, the cap), whether a failure falls back, what an exhausted request answers,
and the model rewrite."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmgateway.core.model_rewrite import rewrite_model
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.route_plan import (
    CONTENT_POLICY,
    CONTEXT_LENGTH,
    NO_HEALTHY_KEY,
    Eligible,
    Exhaustion,
    Failure,
    Step,
    exhausted,
    first,
    next_step,
    plan,
)
from llmgateway.core.routes import (
    FallbackReason,
    NotFound,
    ProviderHit,
    Reach,
    Route,
    RouteHit,
    Target,
    resolve_model,
    tiered,
)

A = Target("a", "m-a", weight=6)
B = Target("b", "m-b", weight=3)
C = Target("c", "m-c", weight=1)
LOW = Target("low", "m-low", priority=1)
LOWER = Target("lower", "m-lower", priority=2)


def route(*targets: Target, max_targets: int = 10, **settings: object) -> Route:
    return Route("fast", tiered(targets), max_targets=max_targets, **settings)  # type: ignore[arg-type]


def everyone(provider: str, model: str) -> bool:
    return True


def planned_of(
    route: Route, eligible: Eligible, rng: random.Random, skipped: list[Target] | None = None
) -> tuple[Target, ...]:
    """The whole plan (the request path draws it one target at a time)."""
    return tuple(plan(route, eligible, rng, skipped))


# -- the plan ------------------------------------------------------------------------------------


def test_weights_order_a_tier_as_weighted_draws_without_replacement() -> None:
    """Over 10,000 seeded plans each of the six orders of three targets weighted 6:3:1 comes
    as often as drawing one by weight, then another by weight among the rest."""
    rng = random.Random(20261206)
    fast = route(A, B, C)
    orders = Counter(
        "".join(t.provider for t in planned_of(fast, everyone, rng)) for _ in range(10_000)
    )
    expected = {
        "abc": 0.6 * 3 / 4,
        "acb": 0.6 * 1 / 4,
        "bac": 0.3 * 6 / 7,
        "bca": 0.3 * 1 / 7,
        "cab": 0.1 * 6 / 9,
        "cba": 0.1 * 3 / 9,
    }
    assert set(orders) == set(expected)
    for order, share in expected.items():
        assert orders[order] / 10_000 == pytest.approx(share, abs=0.015), order


def test_equal_weights_share_evenly() -> None:
    rng = random.Random(7)
    fast = route(Target("a", "m"), Target("b", "m"))
    firsts = Counter(planned_of(fast, everyone, rng)[0].provider for _ in range(10_000))
    assert firsts["a"] / 10_000 == pytest.approx(0.5, abs=0.015)


def test_the_same_seed_gives_the_same_plans() -> None:
    fast = route(A, B, C)
    first = [planned_of(fast, everyone, random.Random(3)) for _ in range(5)]
    assert first == [planned_of(fast, everyone, random.Random(3)) for _ in range(5)]


def test_tiers_go_by_priority_whatever_the_weights() -> None:
    heavy_low = Target("low", "m-low", weight=1000, priority=1)
    fast = route(LOWER, heavy_low, A, B)  # config order does not matter
    rng = random.Random(1)
    for _ in range(200):
        planned = planned_of(fast, everyone, rng)
        assert {t.provider for t in planned[:2]} == {"a", "b"}
        assert planned[2:] == (heavy_low, LOWER)


def test_an_ineligible_target_is_never_planned() -> None:
    fast = route(A, B, C, LOW)
    rng = random.Random(2)
    cooling = {"a", "low"}
    for _ in range(200):
        planned = planned_of(fast, lambda provider, model: provider not in cooling, rng)
        assert {t.provider for t in planned} == {"b", "c"}


def test_eligibility_may_be_a_set_of_pairs() -> None:
    fast = route(A, B, LOW)
    planned = planned_of(fast, {("b", "m-b"), ("low", "m-low"), ("a", "other")}, random.Random(0))
    assert planned == (B, LOW)


def test_eligibility_is_asked_once_per_target() -> None:
    asked: list[tuple[str, str]] = []

    def eligible(provider: str, model: str) -> bool:
        asked.append((provider, model))
        return True

    planned_of(route(A, B, C, LOW), eligible, random.Random(0))
    assert sorted(asked) == [("a", "m-a"), ("b", "m-b"), ("c", "m-c"), ("low", "m-low")]


def test_the_first_target_asks_about_no_other() -> None:
    """A request its first target answers draws one number and asks about that target only:
    the plan is drawn as the request moves on, never built whole up front."""
    asked: list[str] = []

    def eligible(provider: str, model: str) -> bool:
        asked.append(provider)
        return True

    draws = 0

    class Counting(random.Random):
        def random(self) -> float:
            nonlocal draws
            draws += 1
            return super().random()

    first = next(plan(route(A, B, C, LOW), eligible, Counting(0)))
    assert asked == [first.provider]
    assert draws == 1


def test_skipped_targets_are_reported() -> None:
    skipped: list[Target] = []
    cooling = {"a", "c"}
    planned = planned_of(
        route(A, B, C, LOW), lambda p, m: p not in cooling, random.Random(4), skipped
    )
    assert planned == (B, LOW)
    assert sorted(t.provider for t in skipped) == ["a", "c"]


def test_nothing_eligible_plans_nothing() -> None:
    assert planned_of(route(A, LOW), lambda provider, model: False, random.Random(0)) == ()


def test_each_target_at_most_once() -> None:
    rng = random.Random(5)
    for _ in range(500):
        planned = planned_of(route(A, B, C, LOW, LOWER), everyone, rng)
        assert len(planned) == len(set(planned)) == 5


def test_max_targets_caps_the_plan_across_tiers() -> None:
    rng = random.Random(9)
    for _ in range(200):
        planned = planned_of(route(A, B, LOW, LOWER, max_targets=3), everyone, rng)
        assert len(planned) == 3
        assert planned[2] == LOW
    assert len(planned_of(route(A, B, C, max_targets=1), everyone, rng)) == 1


def test_skipped_targets_do_not_count_against_the_cap() -> None:
    planned = planned_of(
        route(A, B, LOW, LOWER, max_targets=2), lambda p, m: p not in {"a", "b"}, random.Random(0)
    )
    assert planned == (LOW, LOWER)


# -- the first target, drawn alone ------------------------------------------------------------


def request_plan(fast: Route, eligible: set[str], rng: random.Random) -> tuple[Target, ...]:
    """The targets a request asks, in order, as the request path draws them: `first()`, then,
    when it turns out ineligible, `plan()` with it skipped, else `plan()` going on after it."""

    def ok(provider: str, model: str) -> bool:
        return provider in eligible

    drawn = first(fast, rng)
    if not ok(drawn.provider, drawn.model):
        return planned_of(fast, ok, rng, [drawn])
    return (drawn, *plan(fast, ok, rng, [], (drawn,)))


def test_the_first_draw_follows_the_weights() -> None:
    rng = random.Random(20261207)
    firsts = Counter(first(route(A, B, C, LOW), rng).provider for _ in range(10_000))
    assert set(firsts) == {"a", "b", "c"}  # a lower tier is never first
    for provider, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert firsts[provider] / 10_000 == pytest.approx(share, abs=0.015), provider


def test_a_lone_first_target_takes_no_draw() -> None:
    class Drawless(random.Random):
        def random(self) -> float:
            raise AssertionError("no number is drawn for a tier of one")

    assert first(route(A, LOW), Drawless()) == A


@pytest.mark.parametrize("eligible", [{"a", "b", "c"}, {"b", "c"}, {"a", "c", "low"}, {"low"}])
def test_drawing_the_first_target_alone_keeps_the_plans_odds(eligible: set[str]) -> None:
    """A request draws its first target without asking its eligibility and skips it only when
    its attempt finds no key: over 10,000 seeded requests each order of targets comes as often
    as in the plan drawn among the eligible alone."""
    fast = route(A, B, C, LOW)

    def ok(provider: str, model: str) -> bool:
        return provider in eligible

    reference, drawn = random.Random(11), random.Random(12)
    expected = Counter(
        "/".join(t.provider for t in planned_of(fast, ok, reference)) for _ in range(10_000)
    )
    found = Counter(
        "/".join(t.provider for t in request_plan(fast, eligible, drawn)) for _ in range(10_000)
    )
    assert set(found) == set(expected)
    for order, count in expected.items():
        assert found[order] / 10_000 == pytest.approx(count / 10_000, abs=0.02), order


def test_the_plan_after_a_first_target_leaves_it_out_and_counts_it() -> None:
    rng = random.Random(3)
    for _ in range(200):
        went_on = tuple(plan(route(A, B, C, LOW, max_targets=2), everyone, rng, [], (B,)))
        assert B not in went_on
        assert len(went_on) == 1  # B took one of the two places
        assert went_on[0] in (A, C)


def test_a_skipped_first_target_takes_no_place() -> None:
    planned = planned_of(route(A, B, max_targets=1), lambda p, m: p != "a", random.Random(0), [A])
    assert planned == (B,)


# -- resolving a model ---------------------------------------------------------------------------

FAST = route(A, B)
SHADOW = Route("a/m-a", tiered((C,)))
REACH = Reach({"fast": FAST, "a/m-a": SHADOW}, frozenset({"a", "openrouter"}))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("fast", RouteHit(FAST)),  # an exact alias
        ("a/m-a", RouteHit(SHADOW)),  # the alias wins over <provider>/<rest>
        ("a/m-b", ProviderHit("a", "m-b")),
        ("openrouter/openai/gpt-4o", ProviderHit("openrouter", "openai/gpt-4o")),
        ("b/m-b", NotFound("b/m-b")),  # a provider the token may not use
        ("slow", NotFound("slow")),  # not an alias the token may use
        ("a", NotFound("a")),  # a provider's name alone names no model
        ("a/", NotFound("a/")),
        ("/m-a", NotFound("/m-a")),
        ("openai/gpt-4o", NotFound("openai/gpt-4o")),  # 'openai' is no provider here
        ("Fast", NotFound("Fast")),  # exact: case matters
    ],
)
def test_resolution_order(model: str, expected: object) -> None:
    assert resolve_model(model, REACH) == expected


# -- falling back --------------------------------------------------------------------------------

LONG = route(A, context_length_fallback="long")
NARROW = route(A, fallback_on=frozenset({"rate_limited"}), fallback_on_status=frozenset({402}))


@pytest.mark.parametrize(
    ("reason", "status", "step"),
    [
        (None, 200, Step.ANSWER),
        ("rate_limited", 429, Step.NEXT_TARGET),
        ("no_quota", 429, Step.NEXT_TARGET),
        ("server_error", 500, Step.NEXT_TARGET),
        ("service_unavailable", 503, Step.NEXT_TARGET),
        ("overloaded", 529, Step.NEXT_TARGET),
        ("timeout", None, Step.NEXT_TARGET),
        ("network_error", None, Step.NEXT_TARGET),
        ("egress_error", None, Step.NEXT_TARGET),
        ("stream_disconnect", 200, Step.NEXT_TARGET),
        ("no_model", 404, Step.NEXT_TARGET),  # the retired-model exception to 404
        (NO_HEALTHY_KEY, None, Step.NEXT_TARGET),
        ("invalid_key", 400, Step.NEXT_TARGET),  # the target ran out of keys
        ("auth_refused", 401, Step.NEXT_TARGET),
        ("no_access", 403, Step.NEXT_TARGET),
        ("bad_request", 400, Step.ANSWER),
        ("unknown", 404, Step.ANSWER),
        ("unknown", 413, Step.ANSWER),
        ("unknown", 422, Step.ANSWER),
        ("forbidden", 403, Step.ANSWER),
        (CONTENT_POLICY, 400, Step.ANSWER),
        (CONTEXT_LENGTH, 400, Step.ANSWER),  # no context-length alias on this route
        ("unknown", 402, Step.ANSWER),  # not in fallback_on_status here
    ],
)
def test_fallback_decisions_by_default(reason: str | None, status: int | None, step: Step) -> None:
    assert next_step(route(A), reason, status) is step


def test_context_length_goes_only_to_the_context_length_alias() -> None:
    assert next_step(LONG, CONTEXT_LENGTH, 400) is Step.CONTEXT_ALIAS
    assert next_step(LONG, "bad_request", 400) is Step.ANSWER


def test_fallback_on_narrows_and_fallback_on_status_widens() -> None:
    assert next_step(NARROW, "rate_limited", 429) is Step.NEXT_TARGET
    assert next_step(NARROW, "server_error", 500) is Step.ANSWER
    assert next_step(NARROW, "unknown", 402) is Step.NEXT_TARGET
    assert next_step(NARROW, "server_error", 402) is Step.NEXT_TARGET


def test_every_error_reason_has_a_decision() -> None:
    """A reason classify() gives that no rule names is answered, never an exception."""
    for reason in ErrorReason:
        assert next_step(route(A), reason.value, None) in set(Step)
    assert {r.value for r in FallbackReason} - {r.value for r in ErrorReason} == {NO_HEALTHY_KEY}


# -- running out of targets ----------------------------------------------------------------------


def test_all_rate_limited_is_429_with_the_smallest_retry_after() -> None:
    failures = [
        Failure(A, "rate_limited", 429, 30.0),
        Failure(B, "no_quota", 429, None),
        Failure(C, "rate_limited", None, 4.5, called=False),  # skipped: its keys are cooling
    ]
    assert exhausted(failures) == Exhaustion(429, "rate_limit_exceeded", 4.5, None)


def test_all_rate_limited_without_a_known_wait() -> None:
    assert exhausted([Failure(A, "rate_limited", 429)]).retry_after is None


def test_no_target_called_is_503_no_healthy_key() -> None:
    failures = [
        Failure(A, NO_HEALTHY_KEY, called=False),
        Failure(B, "rate_limited", None, 8.0, called=False),
    ]
    assert exhausted(failures) == Exhaustion(503, NO_HEALTHY_KEY, 8.0, None)
    assert exhausted([]) == Exhaustion(503, NO_HEALTHY_KEY, None, None)


def test_otherwise_the_last_called_target_is_answered() -> None:
    last = Failure(B, "server_error", 500)
    failures = [
        Failure(A, "rate_limited", 429, 3.0),
        last,
        Failure(C, NO_HEALTHY_KEY, called=False),
    ]
    assert exhausted(failures) == Exhaustion(500, "server_error", None, last)


@pytest.mark.parametrize(("reason", "status"), [("timeout", 504), ("network_error", 502)])
def test_a_failure_without_a_status_gets_its_class(reason: str, status: int) -> None:
    failure = Failure(A, reason)
    assert exhausted([failure]) == Exhaustion(status, reason, None, failure)


# -- rewriting the model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"fast","messages":[{"role":"user","content":"hi"}]}',
        b'{ "messages": [], "model" :\n "fast", "stream": true }',
        b'{"metadata":{"model":"keep"},"model":"fast"}',  # a nested model stays
        b'{"messages":[{"content":"\\"model\\": \\"x\\""}],"model":"fast"}',
        b'{"\\"model":"keep","model":"fast"}',
        b'{"\\u006dodel":"fast","tools":[{"model":"keep"}],"n":1.50e2}',
        b'{"a":["model"],"model":"f\\u0061st"}',
    ],
)
def test_only_the_top_level_model_changes(body: bytes) -> None:
    rewritten = rewrite_model(body, 'gemini/2.5 "flash"')
    assert rewritten is not None
    before, after = json.loads(body), json.loads(rewritten)
    assert after.pop("model") == 'gemini/2.5 "flash"'
    assert before.pop("model") == "fast"
    assert after == before
    old = b'"fast"' if b'"fast"' in body else b'"f\\u0061st"'
    assert body.count(old) == 1  # so every other byte must stay as it was
    assert rewritten == body.replace(old, b'"gemini/2.5 \\"flash\\""')


def test_bytes_outside_the_model_are_kept() -> None:
    body = b'{"model": "fast", "temperature": 1.0E0, "x": "\xc3\xa9"}'
    assert rewrite_model(body, "deepseek-chat") == (
        b'{"model": "deepseek-chat", "temperature": 1.0E0, "x": "\xc3\xa9"}'
    )


@pytest.mark.parametrize(
    "body", [b'{"messages":[]}', b'{"model":{"x":1}}', b'{"x":{"model":"m"},"y":{"model":"n"}}']
)
def test_no_top_level_model_string_is_none(body: bytes) -> None:
    assert rewrite_model(body, "m") is None


def test_a_plain_body_is_rewritten_at_its_one_model() -> None:
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "a\\nb"}]}'
    assert rewrite_model(body, "m", plain=True) == body.replace(b'"fast"', b'"m"')
    assert rewrite_model(body, "m", plain=True) == rewrite_model(body, "m")


def test_a_model_naming_needs_json_escapes() -> None:
    body = b'{"model":"fast"}'
    assert rewrite_model(body, 'a"b\\c\u00e9\n') == b'{"model":"a\\"b\\\\c\\u00e9\\n"}'


_TARGETS = st.lists(
    st.builds(
        Target,
        provider=st.sampled_from(["p1", "p2", "p3"]),
        model=st.sampled_from(["m1", "m2"]),
        weight=st.floats(min_value=0.001, max_value=1000),
        priority=st.integers(min_value=0, max_value=2),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda t: (t.provider, t.model),
)


@given(
    targets=_TARGETS,
    cap=st.integers(min_value=1, max_value=7),
    cooling=st.sets(st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["m1", "m2"]))),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_plan_keeps_the_rules(
    targets: list[Target], cap: int, cooling: set[tuple[str, str]], seed: int
) -> None:
    planned = planned_of(
        route(*targets, max_targets=cap),
        lambda provider, model: (provider, model) not in cooling,
        random.Random(seed),
    )
    eligible = [t for t in targets if (t.provider, t.model) not in cooling]
    assert len(planned) == len(set(planned)) == min(cap, len(eligible))
    assert set(planned) <= set(eligible)
    assert [t.priority for t in planned] == sorted(t.priority for t in planned)
    lowest = sorted(eligible, key=lambda t: t.priority)[: len(planned)]
    assert sorted(t.priority for t in planned) == [t.priority for t in lowest]
