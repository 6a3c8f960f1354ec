"""The fake upstream's Anthropic shapes over real loopback HTTP: the official SDK reads its
messages, streams, token counts and models list as Anthropic's, and every fault answers in
Anthropic's documented error shape, which `classify()` and the first-event detector read as
the real ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import orjson
import pytest
from anthropic.types import MessageParam

from llmgateway.config.settings import AnthropicProvider
from llmgateway.core.classify import classify
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.stream_commit import Decision, FirstEvent, outcome_of_peek
from llmgateway.testing import Behavior, FakeUpstream

R = ErrorReason
MODEL = "claude-sonnet-4-5"
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
BODY = {"model": MODEL, "max_tokens": 8, "messages": HI}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def claude(fake: FakeUpstream) -> AnthropicProvider:
    return AnthropicProvider(
        provider_type="anthropic",
        keys_path="keys/claude",
        api_base_url=fake.anthropic_base,
        default_model=MODEL,
        models={MODEL: {"endpoint_suffix": "/messages"}},
    )


async def test_the_sdk_reads_the_fakes_messages_streams_counts_and_models(
    fake: FakeUpstream,
) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-good-1", max_retries=0)
    reply = await client.messages.create(model=MODEL, max_tokens=8, messages=HI)
    assert reply.content[0].text == "Hello from the"  # type: ignore[union-attr]
    assert reply.usage.cache_read_input_tokens == 0
    async with client.messages.stream(model=MODEL, max_tokens=8, messages=HI) as stream:
        assert [t async for t in stream.text_stream] == ["Hello", " from", " the"]
        final = await stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)
    counted = await client.messages.count_tokens(model=MODEL, messages=HI)
    assert counted.input_tokens > 0
    listed = [m.id async for m in client.models.list(limit=2)]  # paged by after_id
    assert listed == list(fake.models)
    await client.close()


async def test_a_stream_is_anthropics_event_sequence(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"x-api-key": "sk-ant-good-1", "anthropic-version": "2023-06-01"}
    body = {**BODY, "stream": True}
    async with http.post(f"{fake.url}/v1/messages", json=body, headers=headers) as answer:
        assert answer.content_type == "text/event-stream"
        text = (await answer.read()).decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


CASES = [
    ("sk-ant-invalid-1", None, 401, "authentication_error", R.INVALID_KEY),
    ("sk-ant-noquota-1", None, 400, "invalid_request_error", R.NO_QUOTA),
    ("sk-ant-ratelimited-1", None, 429, "rate_limit_error", R.RATE_LIMITED),
    (
        "sk-ant-over-1",
        Behavior(error_rate=1.0, error_status=529),
        529,
        "overloaded_error",
        R.OVERLOADED,
    ),
    ("sk-ant-err-1", Behavior(error_rate=1.0, error_status=500), 500, "api_error", R.SERVER_ERROR),
    ("sk-ant-nomodel-1", None, 404, "not_found_error", R.NO_MODEL),
    ("sk-ant-contextlength-1", None, 400, "invalid_request_error", R.CONTEXT_LENGTH),
]


@pytest.mark.parametrize(("key", "behavior", "status", "kind", "reason"), CASES)
async def test_faults_answer_in_anthropics_shape(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    key: str,
    behavior: Behavior | None,
    status: int,
    kind: str,
    reason: ErrorReason,
) -> None:
    fake.set_behavior(key, behavior)
    async with http.post(
        f"{fake.url}/v1/messages", json=BODY, headers={"x-api-key": key}
    ) as answer:
        raw = await answer.read()
        headers = {k.lower(): v for k, v in answer.headers.items()}
    assert answer.status == status
    document = orjson.loads(raw)
    assert document["type"] == "error"
    assert document["error"]["type"] == kind
    assert key not in raw.decode()
    assert classify(claude(fake), status, headers, raw).reason is reason
    if status == 429:
        assert float(headers["retry-after"]) > 0


async def test_an_outage_of_529s_and_a_missing_key(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_outage(529)
    async with http.post(
        f"{fake.url}/v1/messages", json=BODY, headers={"x-api-key": "sk-ant-good-1"}
    ) as answer:
        assert answer.status == 529
        assert (await answer.json())["error"]["type"] == "overloaded_error"
    fake.clear_outage()
    async with http.post(f"{fake.url}/v1/messages", json=BODY) as answer:
        assert answer.status == 401
        assert (await answer.json())["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("after", "status", "reason"), [(0, 529, R.OVERLOADED), (1, 429, R.RATE_LIMITED)]
)
async def test_a_stream_error_event_is_read_as_the_real_one(
    fake: FakeUpstream, http: aiohttp.ClientSession, after: int, status: int, reason: ErrorReason
) -> None:
    key = "sk-ant-streamfault-1"
    fake.set_behavior(key, Behavior(stream_error=status, stream_error_after=after))
    body = {**BODY, "stream": True}
    async with http.post(
        f"{fake.url}/v1/messages", json=body, headers={"x-api-key": key}
    ) as answer:
        assert answer.status == 200
        raw = await answer.read()
    assert b"event: error\n" in raw
    first = FirstEvent()
    peek = first.feed(raw)
    assert peek.decision is Decision.ERROR  # message_start held back, then the error
    assert outcome_of_peek(claude(fake), peek).reason is reason
