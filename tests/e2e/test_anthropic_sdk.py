"""The real gateway over HTTP, driven by the official `anthropic` SDK (sync and async, whole
and streamed), against the fake upstream's Messages API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import anthropic
import openai
import orjson
import pytest
from anthropic.types import MessageParam
from starlette.types import Message

from llmgateway.conductor import router as router_module
from llmgateway.conductor.router import Router
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.anthropic_rig import (
    CLAUDE_TOKEN,
    GOOD_CLAUDE,
    MODEL,
    async_client,
    claude_settings,
    sync_client,
)
from tests.helpers import start_gateway

HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


async def test_async_sdk_messages_whole_and_streamed(tmp_path: Path, fake: FakeUpstream) -> None:
    async with start_gateway(claude_settings(tmp_path, fake)) as running:
        client = async_client(running.url)
        reply = await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
        assert reply.content[0].type == "text"
        assert reply.content[0].text == "Hello from the"
        assert reply.usage.input_tokens == 5
        async with client.messages.stream(model=MODEL, max_tokens=16, messages=HI) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert pieces == ["Hello", " from", " the"]
        assert final.usage.output_tokens == 3
        assert final.stop_reason == "end_turn"
    assert fake.calls(GOOD_CLAUDE) == 2
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == GOOD_CLAUDE
    assert seen.headers["anthropic-version"]  # the SDK's own, passed through
    assert "authorization" not in seen.headers
    assert CLAUDE_TOKEN not in str(seen.headers)


async def test_sync_sdk_messages_count_tokens_and_models(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with start_gateway(claude_settings(tmp_path, fake)) as running:

        def drive() -> tuple[str, list[str], int, list[str], str]:
            client = sync_client(running.url)
            reply = client.messages.create(model=MODEL, max_tokens=16, messages=HI)
            with client.messages.stream(model=MODEL, max_tokens=16, messages=HI) as stream:
                pieces = list(stream.text_stream)
            counted = client.messages.count_tokens(model=MODEL, messages=HI)
            listed = [m.id for m in client.models.list()]
            one = client.models.retrieve(MODEL)
            return reply.content[0].text, pieces, counted.input_tokens, listed, one.id  # type: ignore[union-attr]

        text, pieces, counted, listed, one = await asyncio.to_thread(drive)
    assert text == "Hello from the"
    assert pieces == ["Hello", " from", " the"]
    assert counted > 0
    assert listed == [MODEL]
    assert one == MODEL
    assert fake.calls(GOOD_CLAUDE) == 3  # the models list is answered by the gateway


async def test_beta_and_version_headers_pass_through(tmp_path: Path, fake: FakeUpstream) -> None:
    async with start_gateway(claude_settings(tmp_path, fake)) as running:
        client = anthropic.AsyncAnthropic(
            base_url=running.url,
            api_key=CLAUDE_TOKEN,
            max_retries=0,
            default_headers={"anthropic-version": "2024-01-01", "anthropic-beta": "x-beta-1"},
        )
        await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.headers["anthropic-version"] == "2024-01-01"
    assert seen.headers["anthropic-beta"] == "x-beta-1"


async def test_version_defaults_when_the_client_sends_none(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": HI}
    async with (
        start_gateway(claude_settings(tmp_path, fake)) as running,
        aiohttp.ClientSession() as session,
        session.post(
            f"{running.url}/v1/messages", json=body, headers={"x-api-key": CLAUDE_TOKEN}
        ) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["type"] == "message"
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["x-api-key"] == GOOD_CLAUDE  # the pool's key, never the client's token
    assert CLAUDE_TOKEN not in str(seen.headers)


async def test_the_models_list_and_an_unknown_model_in_anthropics_shape(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    headers = {"x-api-key": CLAUDE_TOKEN}
    async with (
        start_gateway(claude_settings(tmp_path, fake)) as running,
        aiohttp.ClientSession(headers=headers) as session,
    ):
        async with session.get(f"{running.url}/v1/models") as listed:
            assert listed.status == 200
            page = await listed.json()
        async with session.get(f"{running.url}/v1/models/claude-none") as unknown:
            assert unknown.status == 404
            missing = await unknown.json()
        async with session.post(
            f"{running.url}/v1/messages",
            json={"model": "claude-none", "max_tokens": 8, "messages": HI},
        ) as refused:
            assert refused.status == 404
            not_served = await refused.json()
    assert page["data"] == [
        {
            "type": "model",
            "id": MODEL,
            "display_name": MODEL,
            "created_at": page["data"][0]["created_at"],
        }
    ]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (False, MODEL, MODEL)
    assert missing["error"]["type"] == "not_found_error"
    assert not_served["type"] == "error"
    assert not_served["error"]["type"] == "not_found_error"
    assert fake.calls(GOOD_CLAUDE) == 0


async def test_wrong_token_is_an_anthropic_authentication_error(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    wrong = "gw-wrong-token-0099-secret"
    async with start_gateway(claude_settings(tmp_path, fake)) as running:
        client = async_client(running.url, wrong)
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
    assert raised.value.status_code == 401
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert wrong not in raised.value.response.text
    assert fake.calls(GOOD_CLAUDE) == 0


async def test_upstream_errors_reach_the_sdk_as_its_own(tmp_path: Path, fake: FakeUpstream) -> None:
    bad = "sk-ant-invalid-claude-000001"
    async with start_gateway(claude_settings(tmp_path, fake, [bad])) as running:
        client = async_client(running.url)
        with pytest.raises(anthropic.APIStatusError) as raised:
            await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
        fake.set_missing_models([MODEL])
        with pytest.raises(anthropic.NotFoundError):
            await async_client(running.url).messages.create(
                model="claude-unknown", max_tokens=16, messages=HI
            )
    # the only key is invalid: the client is told no key can serve, in Anthropic's shape
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert bad not in raised.value.response.text


async def test_failing_keys_are_skipped_and_the_client_sees_no_error(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    keys = ["sk-ant-invalid-claude-01", "sk-ant-over-claude-02", GOOD_CLAUDE]
    fake.set_behavior(keys[1], Behavior(error_rate=1.0, error_status=529))
    async with start_gateway(claude_settings(tmp_path, fake, keys)) as running:
        client = async_client(running.url)
        for _ in range(6):
            reply = await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
            assert reply.content
            async with client.messages.stream(model=MODEL, max_tokens=16, messages=HI) as s:
                assert [t async for t in s.text_stream]
    assert fake.calls(GOOD_CLAUDE) >= 12


async def test_an_error_event_mid_stream_reaches_the_sdk_in_band(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    flaky = "sk-ant-midstream-claude-01"
    fake.set_behavior(flaky, Behavior(stream_error=529, stream_error_after=4))
    pieces: list[str] = []

    async def stream(client: anthropic.AsyncAnthropic) -> None:
        async with client.messages.stream(model=MODEL, max_tokens=16, messages=HI) as s:
            async for text in s.text_stream:
                pieces.append(text)

    async with start_gateway(claude_settings(tmp_path, fake, [flaky])) as running:
        client = async_client(running.url)
        with pytest.raises(anthropic.APIStatusError) as raised:
            await stream(client)
        await client.close()
    assert pieces == ["Hello"]  # the events before the error were relayed as they came
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "overloaded_error"


async def test_openai_format_goes_to_anthropics_openai_endpoint(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with start_gateway(claude_settings(tmp_path, fake)) as running:
        client = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=CLAUDE_TOKEN)
        reply = await client.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {GOOD_CLAUDE}"
    assert "x-api-key" not in seen.headers


async def test_openai_format_with_the_token_as_x_api_key_still_takes_the_openai_endpoint(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    body = {"model": MODEL, "messages": HI}
    async with (
        start_gateway(claude_settings(tmp_path, fake)) as running,
        aiohttp.ClientSession() as session,
        session.post(
            f"{running.url}/v1/chat/completions", json=body, headers={"x-api-key": CLAUDE_TOKEN}
        ) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["object"] == "chat.completion"
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {GOOD_CLAUDE}"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (b"/v1/messages", []),
        (b"/v1/models", [(b"x-api-key", b"t")]),
        (b"/v1/models", [(b"anthropic-version", b"v")]),
    ],
)
async def test_a_pool_still_loading_answers_starting_in_anthropics_shape(
    monkeypatch: pytest.MonkeyPatch, path: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    from starlette.applications import Starlette

    monkeypatch.setattr(router_module, "STARTING_WAIT_SEC", 0.0)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "raw_path": path, "method": "POST", "headers": headers}
    await Router(Starlette())(scope, receive, send)
    assert sent[0]["status"] == 503
    body = orjson.loads(sent[1]["body"])
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
