"""The attempt loop and its edge, in memory (`loop_rig`): Retry-After against the deadline, the
retry budget, egress exclusion, per-key limits, cancellation, client disconnects and faults
after the first byte. Every test ends with nothing held: no key leased, no budget slot, no
limit slot, no response open."""

from __future__ import annotations

import asyncio

import pytest
from tests.helpers import eventually
from tests.unit.loop_rig import (
    COMPLETION,
    EVENTS,
    HALF_OPEN_BREAKER,
    JSON,
    KEYS,
    NOTHING_HELD,
    SSE,
    half_open,
    make_rig,
)

from llmgateway.conductor.claim import Claim
from llmgateway.core.outcomes import Outcome
from llmgateway.testing.memory_upstream import (
    MemoryUpstream,
    ScriptedResponse,
    SentRequest,
    connect_error,
    reset,
)

PROXY_A = "http://10.0.0.1:3128"
PROXY_B = "http://10.0.0.2:3128"


def ok(sent: SentRequest) -> ScriptedResponse:
    return ScriptedResponse(200, JSON, COMPLETION)


def in_turn(*script: ScriptedResponse | BaseException) -> MemoryUpstream:
    return MemoryUpstream.answering(*script)


def busy(retry_after: str | None = None) -> ScriptedResponse:
    """A 503 (overloaded: the provider's fault), with a Retry-After when given."""
    headers = {**JSON, **({"retry-after": retry_after} if retry_after else {})}
    return ScriptedResponse(503, headers, b'{"error":{"message":"overloaded"}}')


# -- answers and retries ----------------------------------------------------------------------


async def test_a_small_answer_is_read_whole_relayed_and_everything_given_back() -> None:
    rig = make_rig(ok)
    got = await rig.send()
    assert (got.status, got.body, got.complete) == (200, COMPLETION, True)
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD
    assert {rig.state(key) for key in KEYS} == {"healthy"}


async def test_a_retry_after_that_fits_the_deadline_is_waited_for() -> None:
    rig = make_rig(in_turn(busy("2"), ScriptedResponse(200, JSON, COMPLETION)))
    got = await rig.send()
    assert got.status == 200
    assert rig.pauses == [2.0]
    assert len(rig.upstream.requests) == 2
    assert rig.upstream.requests[0].key != rig.upstream.requests[1].key  # another key
    assert rig.leaks() == NOTHING_HELD


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    timeouts = {"connect": 1.0, "read": 5.0, "total": 10.0}
    rig = make_rig(in_turn(busy("60"), ScriptedResponse(200, JSON, COMPLETION)), timeouts=timeouts)
    got = await rig.send()
    assert got.status == 200
    assert rig.pauses == []  # the backoff (0 s here), not the 60 s asked for
    assert len(rig.upstream.requests) == 2
    assert rig.leaks() == NOTHING_HELD


async def test_a_retry_that_cannot_connect_before_the_deadline_is_not_started() -> None:
    timeouts = {"connect": 5.0, "read": 5.0, "total": 4.0}
    rig = make_rig(in_turn(busy()), timeouts=timeouts)
    got = await rig.send()
    assert got.status == 503  # the upstream's answer, passed on
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD


async def test_the_retry_budget_refuses_a_retry() -> None:
    rig = make_rig(in_turn(busy()), retry_budget={"percent": 0, "min_concurrent": 0})
    got = await rig.send()
    assert got.status == 503
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD


async def test_a_client_sdk_retry_takes_the_budget_slot_a_retry_of_ours_needs() -> None:
    rig = make_rig(in_turn(busy()), retry_budget={"percent": 0, "min_concurrent": 1})
    got = await rig.send(headers=[("x-stainless-retry-count", "1")])
    assert got.status == 503
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD


async def test_a_failed_egress_is_not_tried_again_within_the_request() -> None:
    def by_egress(sent: SentRequest) -> ScriptedResponse:
        if sent.egress == PROXY_A:
            raise connect_error()
        return ScriptedResponse(200, JSON, COMPLETION)

    keys = ("sk-unit-loop-proxy-a-0001", "sk-unit-loop-proxy-a-0002", "sk-unit-loop-proxy-b-0003")
    rig = make_rig(
        by_egress,
        keys,
        egresses=(PROXY_A, PROXY_A, PROXY_B),
        gateway={"selection": "round_robin"},
        retry={"on_server_error": {"attempts": 3, "backoff_sec": 0.0}},
    )
    got = await rig.send()
    assert got.status == 200
    assert [sent.egress for sent in rig.upstream.requests] == [PROXY_A, PROXY_B]
    assert rig.leaks() == NOTHING_HELD
    # nobody blames the key for its proxy
    assert rig.state(keys[0]) == "healthy"


async def test_keys_at_their_per_key_limit_end_in_429_with_retry_after() -> None:
    rig = make_rig(ok, key_limits={"rpm": 1})
    for _ in KEYS:  # one request a minute per key: each key serves one
        assert (await rig.send()).status == 200
    got = await rig.send()
    assert got.status == 429
    assert 50 <= int(got.headers["retry-after"]) <= 60
    assert b"per-key limit" in got.body
    assert len(rig.upstream.requests) == len(KEYS)
    assert rig.leaks() == NOTHING_HELD


# -- cancellation and the client going away -----------------------------------------------------


async def test_a_request_cancelled_mid_attempt_gives_everything_back() -> None:
    never = asyncio.Event()
    rig = make_rig(
        lambda sent: ScriptedResponse(200, JSON, COMPLETION, after=never),
        circuit_breaker=HALF_OPEN_BREAKER,
        key_limits={"max_concurrent": 5},
    )
    half_open(rig)
    task = asyncio.create_task(rig.send(headers=[("x-stainless-retry-count", "1")]))
    await rig.upstream.received(1)
    assert rig.leaks()["leased"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.leaks() == NOTHING_HELD  # the half-open trials included
    assert {rig.state(key) for key in KEYS} == {"healthy"}


async def test_a_request_cancelled_mid_stream_gives_everything_back() -> None:
    more = asyncio.Event()
    rig = make_rig(lambda sent: ScriptedResponse(200, SSE, [EVENTS[0], more, EVENTS[1]]))
    task = asyncio.create_task(rig.send())
    await eventually(lambda: rig.upstream.responses != [] and rig.leaks()["leased"] == 1)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.leaks() == NOTHING_HELD


async def test_a_client_that_leaves_mid_stream_frees_its_key_unblamed() -> None:
    more = asyncio.Event()
    rig = make_rig(lambda sent: ScriptedResponse(200, SSE, [EVENTS[0], more, EVENTS[1]]))

    async def client(message: dict[str, object]) -> None:
        if message.get("body") == EVENTS[0]:
            rig.disconnect()  # its connection is lost: the server's protocol tells the app

    got = await rig.send(client=client)  # the edge ends the request quietly
    assert got.status == 200
    assert not got.complete
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD
    assert {rig.state(key) for key in KEYS} == {"healthy"}


async def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_call() -> None:
    never = asyncio.Event()
    rig = make_rig(lambda sent: ScriptedResponse(200, JSON, COMPLETION, after=never))
    task = asyncio.create_task(rig.send())
    await rig.upstream.received(1)
    rig.disconnect()
    got = await task
    assert got.messages == []
    assert rig.leaks() == NOTHING_HELD
    assert {rig.state(key) for key in KEYS} == {"healthy"}


# -- faults after the first byte ---------------------------------------------------------------


async def test_a_stream_cut_after_the_first_byte_is_not_retried_and_blames_its_key() -> None:
    rig = make_rig(
        lambda sent: ScriptedResponse(200, SSE, [EVENTS[0], reset()]),
        outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 100},
    )
    got = await rig.send()
    assert got.status == 200
    assert got.body.startswith(EVENTS[0])
    assert b'"error"' in got.body[len(EVENTS[0]) :]  # in-band, after what was sent
    assert got.complete
    assert len(rig.upstream.requests) == 1  # bytes reached the client: no retry
    cut = rig.upstream.requests[0].key
    assert cut is not None
    assert rig.state(cut) == "ejected"  # a cut stream counts against its key
    assert rig.leaks() == NOTHING_HELD


async def test_streams_cut_together_blame_only_the_first_key() -> None:
    cut = asyncio.Event()
    rig = make_rig(
        lambda sent: ScriptedResponse(200, SSE, [EVENTS[0], cut, reset()]),
        outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 100},
    )
    tasks = [asyncio.create_task(rig.send()) for _ in range(2)]
    await eventually(lambda: len(rig.upstream.responses) == 2)
    cut.set()  # both break off: an egress or provider fault, not two keys'
    for got in await asyncio.gather(*tasks):
        assert (got.status, got.complete) == (200, True)
    states = [rig.state(sent.key or "") for sent in rig.upstream.requests]
    assert sorted(map(str, states)) == ["ejected", "healthy"]
    assert rig.leaks() == NOTHING_HELD


async def test_a_plain_body_cut_mid_way_is_truncated_not_retried() -> None:
    big = b"x" * (2 * 1024 * 1024)  # over WHOLE_BODY_LIMIT: streamed, not read whole
    headers = {**JSON, "content-length": str(2 * len(big))}
    rig = make_rig(lambda sent: ScriptedResponse(200, headers, [big, reset()]))
    got = await rig.send()
    assert got.status == 200
    assert not got.complete  # the server closes the connection: the client sees it cut
    assert len(rig.upstream.requests) == 1
    assert rig.leaks() == NOTHING_HELD


async def test_a_small_answer_cut_short_is_retried_on_another_key() -> None:
    short = ScriptedResponse(200, {**JSON, "content-length": "100"}, [b'{"id":', reset()])
    rig = make_rig(in_turn(short, ScriptedResponse(200, JSON, COMPLETION)))
    got = await rig.send()
    assert (got.status, got.body) == (200, COMPLETION)  # nothing reached the client before
    assert len(rig.upstream.requests) == 2
    assert rig.leaks() == NOTHING_HELD


# -- the claim ends once -----------------------------------------------------------------------


async def test_a_second_end_of_a_claim_gives_nothing_back_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class EndedTwice(Claim):
        def end(self, outcome: Outcome) -> None:
            super().end(outcome)
            super().end(outcome)  # RetryBudget raises on a second release; the pool ignores

    monkeypatch.setattr("llmgateway.conductor.serve_call.Claim", EndedTwice)
    streamed = ScriptedResponse(200, SSE, list(EVENTS))
    rig = make_rig(
        in_turn(busy(), streamed, ScriptedResponse(200, JSON, COMPLETION), busy(), busy()),
        retry={"on_server_error": {"attempts": 2, "backoff_sec": 0.0}},
    )
    assert (await rig.send(headers=[("x-stainless-retry-count", "1")])).status == 200
    assert (await rig.send()).status == 200
    assert (await rig.send()).status == 503
    assert rig.leaks() == NOTHING_HELD
