"""The fake upstream's OpenAI Responses API (`POST /v1/responses`) over real loopback HTTP: the
official SDK parses the whole answer and the streamed events, the usage scanner reads the
usage the SDK shows, and the fake's faults (keys, outages, stream errors) answer it as they
answer chat, in the shapes the gateway's detector and classify() read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llmgateway.config.settings import OpenAILikeProvider
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.stream_commit import Decision, FirstEvent, Peek, outcome_of_peek
from llmgateway.providers.usage import Tokens, UsageScan, scan_whole
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.wire import CACHED_TOKENS, PROMPT_TOKENS, REASONING_TOKENS, text

CHUNKS = 4
GOOD = "sk-good-0000000000000001"


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"chunks": CHUNKS}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(fake: FakeUpstream, key: str = GOOD) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=fake.openai_base, max_retries=0)


async def post(
    http: aiohttp.ClientSession, fake: FakeUpstream, key: str, **body: object
) -> tuple[int, str, bytes]:
    payload = {"model": "gpt-4o-mini", "input": "hi"} | body
    headers = {"authorization": f"Bearer {key}"}
    async with http.post(f"{fake.openai_base}/responses", json=payload, headers=headers) as got:
        return got.status, got.headers["content-type"], await got.read()


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A Responses stream's events: (the `event:` name, the data)."""
    found = []
    for frame in body.split(b"\n\n"):
        if frame:
            name, data = frame.split(b"\n")
            found.append((name.removeprefix(b"event: ").decode(), orjson.loads(data[6:])))
    return found


async def test_the_sdk_reads_a_whole_response_and_its_usage(fake: FakeUpstream) -> None:
    sdk = client(fake)
    plain = await sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert (plain.object, plain.status, plain.model) == ("response", "completed", "gpt-4o-mini")
    assert plain.output_text == text(CHUNKS)
    assert plain.output[0].type == "message"
    usage = plain.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 4, 9)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    # a prompt cache key reads some of the prompt from the cache; an effort reasons
    spent = await sdk.responses.create(
        model="gpt-4o-mini", input="hi", prompt_cache_key="c1", reasoning={"effort": "low"}
    )
    usage = spent.usage
    assert usage is not None
    assert usage.input_tokens_details.cached_tokens == CACHED_TOKENS
    assert usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert usage.output_tokens == CHUNKS + REASONING_TOKENS
    assert spent.output_text == text(CHUNKS)  # reasoning adds tokens, not words
    assert fake.calls(GOOD) == 2
    await sdk.close()


async def test_the_sdk_iterates_a_streamed_response(fake: FakeUpstream) -> None:
    sdk = client(fake)
    stream = await sdk.responses.create(
        model="gpt-4o-mini", input="hi", stream=True, prompt_cache_key="c1"
    )
    seen = [event async for event in stream]
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    kinds = [e.type for e in seen]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert len(deltas) == CHUNKS
    assert "".join(deltas) == text(CHUNKS)
    first, last = seen[0], seen[-1]
    assert first.type == "response.created"
    assert first.response.usage is None
    assert last.type == "response.completed"
    assert last.response.output_text == text(CHUNKS)
    usage = last.response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (PROMPT_TOKENS, CHUNKS)
    assert usage.input_tokens_details.cached_tokens == CACHED_TOKENS
    async with sdk.responses.stream(model="gpt-4o-mini", input="hi") as helper:
        final = await helper.get_final_response()
    assert final.output_text == text(CHUNKS)
    await sdk.close()


async def test_the_wire_names_each_event_and_the_scanner_reads_its_usage(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    effort = {"reasoning": {"effort": "high"}}
    status, kind, body = await post(http, fake, GOOD, stream=True, **effort)
    assert (status, kind) == (200, "text/event-stream")
    assert b"[DONE]" not in body
    events = events_of(body)
    assert all(name == data["type"] for name, data in events)
    expected = Tokens(PROMPT_TOKENS, CHUNKS + REASONING_TOKENS, 0, REASONING_TOKENS)
    scan = UsageScan("openai")
    for frame in body.split(b"\n\n"):
        scan.feed(frame + b"\n\n")
    assert scan.tokens() == expected
    status, kind, body = await post(http, fake, GOOD, **effort)
    assert (status, kind) == (200, "application/json")
    assert scan_whole("openai", body) == expected


async def test_key_faults_and_outages_answer_it_as_chat(fake: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        await client(fake, "sk-invalid-0001").responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.RateLimitError):
        await client(fake, "sk-ratelimited-0001").responses.create(model="gpt-4o-mini", input="x")
    fake.set_missing_models(["gone"])
    with pytest.raises(openai.NotFoundError):
        await client(fake).responses.create(model="gone", input="hi")
    fake.set_outage(503)
    with pytest.raises(openai.InternalServerError) as raised:
        await client(fake).responses.create(model="gpt-4o-mini", input="hi")
    assert raised.value.status_code == 503
    fake.clear_outage()
    assert fake.calls("sk-invalid-0001") == fake.calls("sk-ratelimited-0001") == 1


async def test_it_refuses_chat_stream_options(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # what OpenAI answers: a gateway must never inject chat's include_usage here
    options = {"include_usage": True}
    status, _, body = await post(http, fake, GOOD, stream=True, stream_options=options)
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "unknown_parameter"
    status, _, body = await post(http, fake, GOOD, input=None)
    assert status == 200  # `input` is optional (a conversation may carry it)
    status, _, body = await post(http, fake, GOOD, model=None)
    assert status == 400


async def peek_stream(http: aiohttp.ClientSession, fake: FakeUpstream, key: str) -> Peek:
    """The first-event detector's decision on a streamed response, as a gateway peeks."""
    payload = {"model": "gpt-4o-mini", "input": "hi", "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    async with http.post(f"{fake.openai_base}/responses", json=payload, headers=headers) as got:
        detector = FirstEvent()
        decided = Peek(Decision.NEED_MORE)
        async with asyncio.timeout(5):
            while decided.decision is Decision.NEED_MORE:
                chunk = await got.content.readany()
                decided = detector.feed(chunk) if chunk else detector.end()
        return decided


@pytest.mark.parametrize(
    ("status", "after", "reason"),
    [
        (500, 0, ErrorReason.SERVER_ERROR),
        (500, 2, ErrorReason.SERVER_ERROR),  # after the preamble: still before any output
        (429, 2, ErrorReason.RATE_LIMITED),
    ],
)
async def test_a_stream_error_in_the_responses_shape(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    status: int,
    after: int,
    reason: ErrorReason,
) -> None:
    fake.set_behavior("k", Behavior(stream_error=status, stream_error_after=after))
    _, _, body = await post(http, fake, "k", stream=True)
    events = events_of(body)
    assert len(events) == after + 1
    name, data = events[-1]
    assert name == ("response.failed" if status >= 500 else "error")
    assert data["sequence_number"] == after
    decided = await peek_stream(http, fake, "k")
    assert decided.decision is Decision.ERROR
    provider = OpenAILikeProvider(
        provider_type="openai_like",
        keys_path="keys/openai",
        api_base_url=fake.openai_base,
        default_model="gpt-4o-mini",
        models={"gpt-4o-mini": {"endpoint_suffix": "/responses"}},
    )
    assert outcome_of_peek(provider, decided).reason is reason
    sdk = client(fake, "k")
    stream = await sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    assert [e.type async for e in stream][-1] == name
    await sdk.close()


async def test_stream_faults_shape_it(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.set_behavior("e", Behavior(empty_stream=True))
    status, _, body = await post(http, fake, "e", stream=True)
    assert status == 200
    assert set(body.split(b"\n\n")) == {b": keep-alive", b""}
    fake.set_behavior("d", Behavior(drop_after_chunks=3))
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, fake, "d", stream=True)
