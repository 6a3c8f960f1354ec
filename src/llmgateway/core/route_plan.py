"""A route's attempt plan, whether a failed target falls back, and what a request that ran out
of targets answers. Pure: the random source is injected, eligibility is asked, never scanned.

The request path draws each request's `first()` target, and the rest of its `plan()` only when
that target fails (or turns out to have no key it may use); after each target's last
key-level attempt it asks `next_step()`; when the plan (or the deadline, or the retry budget)
runs out, `exhausted()` answers over the targets' failures.
"""

from __future__ import annotations

import bisect
import enum
import random
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.routes import FallbackReason, Route, Target

Eligible = Callable[[str, str], bool] | AbstractSet[tuple[str, str]]
"""Whether a target (provider, model) has a key that may be tried now: one that is not cooling
down, ejected, or behind an open breaker. The caller's predicate must answer in O(1) from state
the pool keeps up to date (a count or a next-ready time per scope), never by scanning keys; a
set of the eligible (provider, model) pairs serves as well."""

NO_HEALTHY_KEY = FallbackReason.NO_HEALTHY_KEY.value
"""The reason of a target that had no key to try, or whose every tried key was refused."""
CONTEXT_LENGTH = ErrorReason.CONTEXT_LENGTH.value
"""The reason `classify()` gives a request too long for the model's context window."""
CONTENT_POLICY = "content_policy"
"""A refusal on content policy, never routed around (`classify()` gives such refusals as the
client's `bad_request` today; this name is kept for a reason of their own)."""
CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})
"""Upstream statuses that are the request's fault: passed through, never a fallback (apart
from the reasons `classify()` tells apart: no_model, context_length)."""
_CLIENT_REASONS = frozenset(
    {ErrorReason.BAD_REQUEST, ErrorReason.UNKNOWN, ErrorReason.FORBIDDEN, CONTENT_POLICY}
)
# the key was at fault: the target ran out of keys, whatever the last key's trouble was
_KEY_TROUBLE = frozenset({ErrorReason.INVALID_KEY, ErrorReason.NO_ACCESS, ErrorReason.AUTH_REFUSED})
_RATE_LIMITS = frozenset({ErrorReason.RATE_LIMITED, ErrorReason.NO_QUOTA})


def first(route: Route, rng: random.Random) -> Target:
    """The first target of a request's plan: a weighted draw in the first tier (one random
    number and a bisection; none for a single target), without asking its eligibility. The
    caller asks the target as it is, since the attempt loop finds out in O(1), without an
    upstream call, that none of its keys may be used (then, when `eligible` says so, the
    target counts as skipped and the plan goes on with `plan(route, eligible, rng, [first])`;
    otherwise with `plan(route, eligible, rng, skipped, (first,))`). Drawn this way among all
    the tier's targets, then among the rest when it turns out ineligible, each eligible target
    has the chances it has in `plan`."""
    cuts = route.cuts
    return route.tiers[0][bisect.bisect_right(cuts, rng.random() * route.totals[0]) if cuts else 0]


def plan(
    route: Route,
    eligible: Eligible,
    rng: random.Random,
    skipped: list[Target] | None = None,
    drawn: tuple[Target, ...] = (),
) -> Iterator[Target]:
    """The targets to try, in order, for one request: tier by tier (priority ascending); inside
    a tier a weighted random order without replacement among the targets eligible now (an
    ineligible target is left out, and added to `skipped`: no upstream call is made to it);
    each target once; at most `route.max_targets`.

    The plan is lazy: each target is drawn when the request moves on to it, and its
    eligibility asked then, so a request answered by its first target draws one random number
    and asks about one target. Inside a tier the next target is drawn among those not yet
    drawn, target i with probability wᵢ / Σw; an ineligible one is set aside and the draw
    repeated among the rest, which gives each eligible target the same chances as a draw
    among the eligible ones alone.

    A plan that goes on from `first` (or from an earlier part of itself) is given the targets
    `drawn` already, and the `skipped` list so far: both are left out, and the drawn ones count
    towards `max_targets`. Drawing among what is left gives each target the chances it had in
    the plan that stopped, since each draw is among the targets not yet drawn."""
    ok = eligible if callable(eligible) else _member(eligible)
    given = len(drawn)
    if given >= route.max_targets:
        return
    left_out = (*(skipped or ()), *drawn)
    for tier, total in zip(route.tiers, route.totals, strict=True):
        left = tier  # what is left of the tier to draw from
        if left_out:
            left = tuple(target for target in tier if target not in left_out)
            total = sum(target.weight for target in left)
        while left:
            index = _drawn(left, total, rng) if len(left) > 1 else 0
            target = left[index]
            left = left[:index] + left[index + 1 :]
            total -= target.weight
            if not ok(target.provider, target.model):
                if skipped is not None:
                    skipped.append(target)
                continue
            yield target
            given += 1
            if given >= route.max_targets:
                return


def _drawn(targets: tuple[Target, ...], total: float, rng: random.Random) -> int:
    """The index of a weighted random pick among `targets` (their weights add up to
    `total`)."""
    point = rng.random() * total
    for index, target in enumerate(targets):
        point -= target.weight
        if point < 0:
            return index
    return len(targets) - 1  # rounding left a sliver past the last


def _member(pairs: AbstractSet[tuple[str, str]]) -> Callable[[str, str], bool]:
    return lambda provider, model: (provider, model) in pairs


class Step(enum.StrEnum):
    """What a request does after a target's last attempt."""

    ANSWER = "answer"  # relay this outcome: success, a client fault, or no fallback reason
    NEXT_TARGET = "next_target"  # try the plan's next target (if the deadline and budget allow)
    CONTEXT_ALIAS = "context_alias"  # restart on the route's context_length_fallback alias


def next_step(route: Route, reason: str | None, status: int | None) -> Step:
    """Whether a target's outcome (`reason`: an `ErrorReason` value, `no_healthy_key`,
    `context_length` or `content_policy`; None for success; `status` the upstream's, if any)
    falls back. In order:

    1. success: answer;
    2. context_length: the route's context-length alias, else answer (passed through);
    3. content_policy: answer (a refusal is never routed around);
    4. a reason in `fallback_on` (invalid_key, no_access and auth_refused count as
       no_healthy_key: the target ran out of keys): next target. `classify()`'s reason wins
       over the status, so a 404 that says the model does not exist (no_model) falls back;
    5. a client fault (bad_request, unknown, forbidden) with status 400/404/413/422: answer;
    6. a status in `fallback_on_status`: next target;
    7. otherwise: answer.
    """
    if reason is None:
        return Step.ANSWER
    if reason == CONTEXT_LENGTH:
        return Step.CONTEXT_ALIAS if route.context_length_fallback else Step.ANSWER
    if reason == CONTENT_POLICY:
        return Step.ANSWER
    if (NO_HEALTHY_KEY if reason in _KEY_TROUBLE else reason) in route.fallback_on:
        return Step.NEXT_TARGET
    if reason in _CLIENT_REASONS and status in CLIENT_FAULT_STATUSES:
        return Step.ANSWER
    return Step.NEXT_TARGET if status in route.fallback_on_status else Step.ANSWER


@dataclass(frozen=True, slots=True)
class Failure:
    """How one target of a request failed: `called` False when it was skipped or found no key
    without an upstream call; `retry_after` the wait its upstream or its pool named."""

    target: Target
    reason: str
    status: int | None = None
    retry_after: float | None = None
    called: bool = True


@dataclass(frozen=True, slots=True)
class Exhaustion:
    """The answer of a request whose targets all failed: our own 429 or 503 (`relay` None),
    or the reply the `relay` failure would get on its own (its status, or 504 after a timeout
    and 502 after any other failure that had none). `retry_after` None: none was known."""

    status: int
    code: str
    retry_after: float | None
    relay: Failure | None


def exhausted(failures: Sequence[Failure]) -> Exhaustion:
    """What a request answers when its plan ran out (or the deadline, or the retry budget):

    - every target rate-limited or out of quota: 429 with the smallest Retry-After among them;
    - else, when no target was called: 503 `no_healthy_key` with the smallest wait known;
    - else the last called target's failure, as it would be answered on its own.
    """
    if failures and all(f.reason in _RATE_LIMITS for f in failures):
        return Exhaustion(429, "rate_limit_exceeded", _soonest(failures), None)
    called = [f for f in failures if f.called]
    if not called:
        return Exhaustion(503, NO_HEALTHY_KEY, _soonest(failures), None)
    last = called[-1]
    status = last.status
    if status is None:
        status = 504 if last.reason == ErrorReason.TIMEOUT else 502
    return Exhaustion(status, last.reason, last.retry_after, last)


def _soonest(failures: Sequence[Failure]) -> float | None:
    waits = [f.retry_after for f in failures if f.retry_after is not None]
    return min(waits) if waits else None
