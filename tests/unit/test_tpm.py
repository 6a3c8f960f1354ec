"""Tokens per minute, the pure parts: the reservation a body makes, the exact local counting
of spends (an injected clock), the key limiter's reserve and settle, and a client's gate
(429 with its own `x-ratelimit-*-tokens`)."""

from __future__ import annotations

import orjson
import pytest
from tests.helpers import ManualClock

from llmgateway.conductor.admission import Refused
from llmgateway.conductor.client_gate import Clients, Spend
from llmgateway.config.settings import KeyLimits
from llmgateway.core.clients import ClientRules
from llmgateway.core.pool_keys import Lease
from llmgateway.limits import KeyLimiter, LocalBackend, Refusal
from llmgateway.limits.counts import LocalCounts
from llmgateway.limits.outage import Outage
from llmgateway.limits.reservation import reservation

T0 = 1_800_000_000.0


# -- the reservation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "output"),
    [
        ({"model": "m", "messages": [], "max_tokens": 300}, 300),
        ({"model": "m", "messages": [], "max_completion_tokens": 70}, 70),
        ({"model": "m", "input": "hi", "max_output_tokens": 1200}, 1200),
        ({"contents": [], "generationConfig": {"maxOutputTokens": 64}}, 64),
    ],
)
def test_a_body_reserves_its_prompt_estimate_plus_its_output_allowance(
    document: dict[str, object], output: int
) -> None:
    body = orjson.dumps(document)
    assert reservation(body) == -(-len(body) // 4) + output


def test_without_an_allowance_the_output_is_estimated_like_the_prompt() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
    assert reservation(body) == 2 * -(-len(body) // 4)
    # a quoted "max_tokens" inside a string is escaped: not an allowance
    quoted = b'{"model":"m","messages":[{"content":"say \\"max_tokens\\": 99999"}]}'
    assert reservation(quoted) == 2 * -(-len(quoted) // 4)


# -- LocalCounts --------------------------------------------------------------------------------


def test_tokens_are_a_sliding_window_with_the_wait_until_enough_free() -> None:
    counts = LocalCounts()
    assert counts.reserve("k", 1, 1000, 400, T0) is None
    assert counts.reserve("k", 2, 1000, 400, T0 + 10) is None
    assert counts.tokens("k", T0 + 10) == 800
    # 300 more need the first spend gone: at T0 + 60
    assert counts.reserve("k", 3, 1000, 300, T0 + 20) == Refusal("tokens", 40.0)
    assert counts.reserve("k", 3, 1000, 200, T0 + 20) is None  # fits exactly
    assert counts.reserve("k", 4, 1000, 1, T0 + 20) == Refusal("tokens", 40.0)
    assert counts.reserve("k", 4, 1000, 500, T0 + 60) == Refusal("tokens", 10.0)
    assert counts.reserve("k", 4, 1000, 400, T0 + 60) is None  # the first left the window
    assert counts.tokens("k", T0 + 60) == 1000


def test_a_settled_spend_frees_the_difference_and_an_unknown_usage_keeps_it() -> None:
    counts = LocalCounts()
    assert counts.reserve("k", 1, 1000, 900, T0) is None
    assert counts.reserve("k", 2, 1000, 200, T0) == Refusal("tokens", 60.0)
    counts.spent(1, 50)  # the answer used 50 of the 900 reserved
    assert counts.tokens("k", T0) == 50
    assert counts.reserve("k", 2, 1000, 200, T0 + 1) is None
    counts.spent(2, None)  # no usage in the answer: the reservation stands
    assert counts.tokens("k", T0 + 1) == 250
    counts.spent(2, 0)  # already settled: ignored
    counts.spent(99, 5)  # never reserved: ignored
    assert counts.tokens("k", T0 + 1) == 250


def test_a_spend_settled_after_it_left_the_window_changes_nothing() -> None:
    counts = LocalCounts()
    assert counts.reserve("k", 1, 100, 80, T0) is None
    assert counts.tokens("k", T0 + 61) == 0
    counts.spent(1, 5)
    assert counts.tokens("k", T0 + 61) == 0
    assert counts.reserve("k", 2, 100, 100, T0 + 61) is None


def test_a_reservation_larger_than_the_limit_waits_for_an_empty_window() -> None:
    counts = LocalCounts()
    assert counts.reserve("k", 1, 100, 5000, T0) is None  # counted as the whole minute
    assert counts.tokens("k", T0) == 100
    assert counts.reserve("k", 2, 100, 5000, T0 + 1) == Refusal("tokens", 59.0)
    assert counts.reserve("k", 2, 100, 1, T0 + 1) == Refusal("tokens", 59.0)
    assert counts.reserve("k", 2, 0, 1, T0 + 1) == Refusal("tokens", 60.0)  # a share of 0


def test_take_counts_nothing_when_its_tokens_do_not_fit() -> None:
    counts = LocalCounts()
    assert counts.take("k", 1, 5, 5, T0, tpm=100, amount=90) is None
    assert counts.take("k", 2, 5, 5, T0, tpm=100, amount=20) == Refusal("tokens", 60.0)
    assert counts.inflight("k") == 1
    assert counts.recent("k", T0) == 1  # the refused request took no rpm slot
    counts.give_back(1)
    counts.spent(1, 10)
    assert counts.take("k", 2, 5, 5, T0, tpm=100, amount=20) is None


# -- the key limiter ----------------------------------------------------------------------------


def lease(lease_id: int, key_id: int = 1) -> Lease:
    return Lease(lease_id, key_id, "sk-secret-000000000000000001", "direct", "m")


async def test_the_key_limiter_reserves_at_acquire_and_settles_at_release() -> None:
    clock = ManualClock(T0)
    backend = LocalBackend(Outage(5.0, clock))
    limiter = KeyLimiter("openai", KeyLimits(tpm=1000), backend, clock, lambda: None)
    assert limiter.metered
    assert await limiter.acquire(lease(1), 700) is None
    assert await limiter.acquire(lease(2), 700) == Refusal("tokens", 60.0)
    assert await limiter.acquire(lease(3, key_id=2), 700) is None  # another key: its own
    limiter.release(lease(2))  # refused, never reserved: ignored
    limiter.release(lease(1), 100)  # answered with 100 tokens
    assert await limiter.acquire(lease(4), 700) is None
    limiter.release(lease(4))  # no answer (a failed attempt): all of it freed
    limiter.release(lease(3, key_id=2), None)  # no usage read: the 700 stand
    clock.advance(1)
    assert backend.counts.tokens(("openai", 1, "m"), clock()) == 100
    assert backend.counts.tokens(("openai", 2, "m"), clock()) == 700
    assert await limiter.acquire(lease(5, key_id=2), 301) == Refusal("tokens", 59.0)


# -- a client's gate ----------------------------------------------------------------------------


async def test_a_client_over_its_tpm_is_refused_with_its_own_token_headers() -> None:
    clock = ManualClock(T0)
    clients = Clients(clock=clock)
    rules = ClientRules("team", tpm=100)
    body = b'{"model":"m","max_tokens":40}'  # 8 + 40 = 48 tokens
    first = await clients.reserve(rules, body)
    assert isinstance(first, Spend)
    assert first.amount == 48
    assert isinstance(await clients.reserve(rules, body), Spend)
    clock.advance(5)
    refused = await clients.reserve(rules, body)
    assert isinstance(refused, Refused)
    assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
    assert refused.retry_after == 55.0
    assert dict(refused.headers) == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-reset-tokens": "55.000s",
        "x-ratelimit-remaining-tokens": "4",
    }
    clients.spent(first, 2)  # the first answer used 2: 46 freed, 48 fit again
    assert isinstance(await clients.reserve(rules, body), Spend)


async def test_a_refusal_over_rpm_still_says_requests() -> None:
    clients = Clients(clock=ManualClock(T0))
    rules = ClientRules("team", rpm=1, tpm=100)
    hold = await clients.admit(rules, {"type": "http", "client": ("10.0.0.1", 1)}, ())
    assert hold is not None
    refused = await clients.admit(rules, {"type": "http", "client": ("10.0.0.1", 1)}, ())
    assert isinstance(refused, Refused)
    names = [name for name, _ in refused.headers]
    assert names == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-requests",
    ]


def test_a_refusal_looks_at_the_oldest_spends_only() -> None:
    counts = LocalCounts()
    for i in range(200):  # 200 spends of 5, one a tenth of a second apart
        assert counts.reserve("k", i, 1000, 5, T0 + i / 10) is None
    # 600 must leave (120 spends): the wait is until the 64th has, at most (a lower bound)
    refused = counts.reserve("k", 999, 1000, 600, T0 + 20)
    assert refused is not None
    assert refused.reason == "tokens"
    assert refused.retry_after == pytest.approx(46.3)
