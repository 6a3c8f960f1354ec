"""The real gateway over HTTP, driven by the official SDKs, against the fake upstream."""

from __future__ import annotations

import asyncio
import logging

import httpx2 as httpx
import openai
import pytest
from google import genai
from google.genai import types

from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, GatewayFactory, eventually, forget_leftovers

GOOD = "sk-good-openai-000000000001"
GOOD_GEMINI = "AIza-good-gemini-00000000001"


def openai_client(url: str, token: str = OPENAI_TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


def gemini_client(url: str, token: str = GEMINI_TOKEN) -> genai.Client:
    options = types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=token, http_options=options)


async def test_openai_chat_non_streaming_and_streaming(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    async with gateway() as url:
        client = openai_client(url)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
        assert len([p for p in pieces if p]) >= 2
    assert fake.calls(GOOD) == 2
    seen = fake.last_request(GOOD)
    assert seen is not None
    assert seen.headers["authorization"] == f"Bearer {GOOD}"
    assert OPENAI_TOKEN not in str(seen.headers)


async def test_models_list_answers_from_config(gateway: GatewayFactory, fake: FakeUpstream) -> None:
    async with gateway() as url:
        models = await openai_client(url).models.list()
    assert sorted(m.id for m in models.data) == ["gpt-4o", "gpt-4o-mini"]
    assert fake.calls(GOOD) == 0


async def test_gemini_native_generate_and_stream(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    async with gateway() as url:
        client = gemini_client(url)
        reply = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert reply.text
        chunks = [
            c.text
            async for c in await client.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hi"
            )
        ]
        assert len([c for c in chunks if c]) >= 2
    assert fake.calls(GOOD_GEMINI) == 2
    seen = fake.last_request(GOOD_GEMINI)
    assert seen is not None
    assert seen.headers["x-goog-api-key"] == GOOD_GEMINI
    assert "key=" not in seen.query
    assert fake.key_in_url == 0


async def test_openai_format_to_gemini_provider(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    async with gateway() as url:
        client = openai_client(url, GEMINI_TOKEN)
        reply = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content
    seen = fake.last_request(GOOD_GEMINI)
    assert seen is not None
    assert seen.path == "/v1beta/openai/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {GOOD_GEMINI}"


async def test_wrong_token_is_401_in_each_shape(gateway: GatewayFactory) -> None:
    async with gateway() as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            await openai_client(url, "not-a-token").models.list()
        assert caught.value.status_code == 401
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
                headers={"x-goog-api-key": "wrong"},
                json={"contents": []},
            )
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert error["code"] == 401
    assert error["status"] == "UNAUTHENTICATED"
    assert "wrong" not in answer.text


async def test_pool_of_good_invalid_rate_limited_and_flaky_keys(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    invalid = "sk-bad-invalid-0000000000001"
    limited = "sk-rate-limited-00000000001"
    flaky = "sk-flaky-server-00000000001"
    fake.set_behavior(invalid, Behavior(invalid=True))
    fake.set_behavior(limited, Behavior(rate_limited=True, retry_after=3600))
    fake.set_behavior(flaky, Behavior(error_rate=1.0, error_status=500))
    async with gateway(openai=[GOOD, invalid, limited, flaky]) as url:
        client = openai_client(url)
        for _ in range(30):
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
    assert fake.calls(invalid) <= 1  # no traffic after its first failure
    assert fake.calls(limited) <= 1  # none before its Retry-After
    assert fake.calls(GOOD) >= 30 - 3


async def test_all_keys_rate_limited_gives_429_with_retry_after(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    limited = "sk-rate-limited-00000000002"
    fake.set_behavior(limited, Behavior(rate_limited=True, retry_after=120))
    async with gateway(openai=[limited]) as url:
        with pytest.raises(openai.RateLimitError) as first:
            await openai_client(url).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.RateLimitError) as second:
            await openai_client(url).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    for caught in (first, second):
        retry_after = int(caught.value.response.headers["retry-after"])
        assert 100 <= retry_after <= 121
    assert fake.calls(limited) == 1


async def test_client_fault_passes_through_unchanged(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    fake.set_behavior(GOOD, Behavior(error_rate=1.0, error_status=422))
    async with gateway() as url, httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            content=b'{"model": "gpt-4o-mini", "messages": []}',
        )
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "The server had an error."
    assert fake.calls(GOOD) == 1
    assert answer.headers["x-request-id"]


async def test_a_request_naming_no_model_is_refused_before_any_key(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    async with gateway() as url, httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            content=b'{"messages": []}',
        )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "model_required"
    assert fake.calls(GOOD) == 0


async def test_body_over_limit_is_413_and_bad_json_is_400(gateway: GatewayFactory) -> None:
    async with (
        gateway(gateway_section={"max_body_bytes": 1024 * 1024}) as url,
        httpx.AsyncClient() as http,
    ):
        too_big = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        )
        bad = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}", "x-request-id": "req-123"},
            content=b'{"model": ',
        )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert bad.headers["x-request-id"] == "req-123"


async def test_client_disconnect_mid_stream_frees_the_key(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    fake.set_behavior(GOOD, Behavior(chunk_delay=0.5))
    async with gateway() as url:
        async with (
            httpx.AsyncClient() as http,
            http.stream(
                "POST",
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                json={"model": "gpt-4o-mini", "messages": [], "stream": True},
            ) as response,
        ):
            async for _ in response.aiter_bytes():
                break
        await eventually(lambda: fake.open_requests == 0, within=2)


async def test_client_leaving_before_the_answer_stops_the_request_at_once(
    gateway: GatewayFactory, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The edge's protocol tells the handler the client is gone: the upstream call ends well
    before its answer would have come, logged as a disconnect (INFO), not an error."""
    await forget_leftovers(caplog)
    fake.set_behavior(GOOD, Behavior(delay=5.0))
    caplog.set_level(logging.INFO)
    async with gateway() as url:
        port = int(url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"model": "gpt-4o-mini", "messages": []}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
            b"authorization: Bearer " + OPENAI_TOKEN.encode() + b"\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        await eventually(lambda: fake.open_requests, within=2)  # it reached the upstream
        assert fake.open_requests == 1
        writer.close()
        await eventually(lambda: fake.open_requests == 0, within=2)  # the answer takes 5 s
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "client disconnected") in messages
    assert not [m for level, m in messages if level >= logging.ERROR]


async def test_upstream_drop_mid_stream_becomes_in_band_error(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    fake.set_behavior(GOOD, Behavior(drop_after_chunks=1))
    async with gateway() as url, httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            json={"model": "gpt-4o-mini", "messages": [], "stream": True},
        )
    assert answer.status_code == 200
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert len(events) >= 2
    assert '"error"' in events[-1]
