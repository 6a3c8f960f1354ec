"""The fake upstream's route-fallback faults over real loopback HTTP: streams that answer 200 and
then an error, or nothing, or stall; models that do not exist; requests over the context window.
Each in every dialect (OpenAI, Gemini native, Gemini's OpenAI-compatible endpoint), read by the
official SDKs, `classify()` and the first-event detector as the real ones are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from llmgateway.config.settings import GeminiProvider, OpenAILikeProvider, ProviderSettings
from llmgateway.core.classify import classify
from llmgateway.core.outcomes import Blame, ErrorReason
from llmgateway.core.stream_commit import Decision, FirstEvent, Peek, outcome_of_peek
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.faults import Dialect

R = ErrorReason
DIALECTS: list[Dialect] = ["openai", "gemini", "compat"]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def provider(fake: FakeUpstream, speaks: Dialect) -> ProviderSettings:
    if speaks == "openai":
        return OpenAILikeProvider(
            provider_type="openai_like",
            keys_path="keys/openai",
            api_base_url=fake.openai_base,
            default_model="gpt-4o-mini",
            models={"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
        )
    return GeminiProvider(  # both Gemini dialects are a gemini provider's
        provider_type="gemini",
        keys_path="keys/gemini",
        api_base_url=fake.gemini_base,
        default_model="gemini-2.5-flash",
        models={"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
    )


def call(
    fake: FakeUpstream, speaks: Dialect, key: str, *, stream: bool, text: str = "hi"
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """URL, JSON body and headers of a generation call in `speaks`."""
    if speaks == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{fake.url}/v1beta/models/gemini-2.5-flash:{method}"
        return url, {"contents": [{"parts": [{"text": text}]}]}, {"x-goog-api-key": key}
    base = fake.openai_base if speaks == "openai" else f"{fake.url}/v1beta/openai"
    model = "gpt-4o-mini" if speaks == "openai" else "gemini-2.5-flash"
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    return f"{base}/chat/completions", body, {"authorization": f"Bearer {key}"}


async def answer(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    speaks: Dialect,
    key: str,
    *,
    stream: bool = False,
    text: str = "hi",
) -> tuple[int, dict[str, str], bytes]:
    url, body, headers = call(fake, speaks, key, stream=stream, text=text)
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def peek(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    speaks: Dialect,
    key: str,
    timeout: float = 5.0,
) -> tuple[int, Peek, bytes]:
    """Stream a call through the first-event detector as a gateway would: the status, the
    decision (committed when `timeout` passes first) and the whole body."""
    url, body, headers = call(fake, speaks, key, stream=True)
    async with http.post(url, json=body, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        detector = FirstEvent()
        decided = Peek(Decision.NEED_MORE)
        try:
            async with asyncio.timeout(timeout):
                while decided.decision is Decision.NEED_MORE:
                    chunk = await response.content.readany()
                    decided = detector.feed(chunk) if chunk else detector.end()
        except TimeoutError:
            decided = detector.commit()
            return response.status, decided, decided.held
        return response.status, decided, decided.held + await response.read()


# --- streams: 200 and then an error, or nothing, or not yet ---------------------------------------


@pytest.mark.parametrize(
    ("speaks", "status", "reason"),
    [
        ("openai", 500, R.SERVER_ERROR),
        ("openai", 429, R.RATE_LIMITED),
        ("gemini", 503, R.OVERLOADED),
        ("gemini", 429, R.RATE_LIMITED),
        ("compat", 500, R.SERVER_ERROR),
        ("compat", 429, R.RATE_LIMITED),
    ],
)
async def test_a_stream_that_answers_200_then_an_error_first(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    speaks: Dialect,
    status: int,
    reason: ErrorReason,
) -> None:
    fake.set_behavior("k", Behavior(stream_error=status))
    code, decided, body = await peek(http, fake, speaks, "k")
    assert code == 200
    assert decided.decision is Decision.ERROR
    assert body == decided.held  # the error event is the whole stream
    outcome = outcome_of_peek(provider(fake, speaks), decided)
    assert outcome.reason is reason
    assert outcome.blame is not Blame.CLIENT


async def test_the_stream_error_after_data_events_is_in_band(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_behavior("k", Behavior(stream_error=503, stream_error_after=2))
    code, decided, body = await peek(http, fake, "openai", "k")
    assert (code, decided.decision) == (200, Decision.COMMIT)
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 3
    assert orjson.loads(events[2].removeprefix(b"data: "))["error"]["type"] == "server_error"
    assert b"[DONE]" not in body


async def test_the_sdks_see_the_stream_error(fake: FakeUpstream) -> None:
    fake.set_behavior("k", Behavior(stream_error=500))
    client = openai.AsyncOpenAI(api_key="k", base_url=fake.openai_base, max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for _ in stream:
            pass
    await client.close()
    options = genai_types.HttpOptions(base_url=fake.gemini_base, api_version="v1beta")
    gemini = genai.Client(api_key="k", http_options=options)
    with pytest.raises(genai_errors.APIError):
        async for _ in await gemini.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        ):
            pass


async def test_a_stream_error_without_alt_sse_is_an_array_element(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_behavior("k", Behavior(stream_error=429, stream_error_after=1))
    url = f"{fake.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(url, json={}, headers={"x-goog-api-key": "k"}) as response:
        array = orjson.loads(await response.read())
    assert "candidates" in array[0]
    assert array[1]["error"]["status"] == "RESOURCE_EXHAUSTED"
    fake.set_behavior("k", Behavior(stream_error=500))
    async with http.post(url, json={}, headers={"x-goog-api-key": "k"}) as response:
        assert orjson.loads(await response.read())[0]["error"]["code"] == 500


@pytest.mark.parametrize("speaks", DIALECTS)
async def test_an_empty_stream_sends_only_keep_alives(
    fake: FakeUpstream, http: aiohttp.ClientSession, speaks: Dialect
) -> None:
    fake.set_behavior("k", Behavior(empty_stream=True))
    code, decided, body = await peek(http, fake, speaks, "k")
    assert (code, decided.decision) == (200, Decision.EMPTY)
    assert set(body.split(b"\n\n")) == {b": keep-alive", b""}
    outcome = outcome_of_peek(provider(fake, speaks), decided)
    assert (outcome.reason, outcome.blame) == (R.SERVER_ERROR, Blame.PROVIDER)


@pytest.mark.parametrize("speaks", DIALECTS)
async def test_a_stalled_stream_sends_its_200_and_then_nothing(
    fake: FakeUpstream, http: aiohttp.ClientSession, speaks: Dialect
) -> None:
    """The headers arrive at once and the first event does not: the peek timeout commits."""
    fake.set_behavior("k", Behavior(first_event_delay=60.0))
    code, decided, body = await peek(http, fake, speaks, "k", timeout=0.2)
    assert (code, decided.decision, body) == (200, Decision.COMMIT, b"")


async def test_a_short_stall_then_the_whole_answer(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_behavior("k", Behavior(first_event_delay=0.05))
    code, decided, body = await peek(http, fake, "openai", "k")
    assert (code, decided.decision) == (200, Decision.COMMIT)
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("speaks", DIALECTS)
async def test_stream_faults_leave_whole_answers_alone(
    fake: FakeUpstream, http: aiohttp.ClientSession, speaks: Dialect
) -> None:
    fake.set_behavior("k", Behavior(stream_error=500, empty_stream=True))
    status, _, _ = await answer(http, fake, speaks, "k")
    assert status == 200


# --- models that do not exist, requests over the context window -----------------------------------


@pytest.mark.parametrize("speaks", DIALECTS)
async def test_a_missing_model_in_each_dialect(
    fake: FakeUpstream, http: aiohttp.ClientSession, speaks: Dialect
) -> None:
    fake.set_missing_models(["gpt-4o-mini", "gemini-2.5-flash"])
    status, headers, body = await answer(http, fake, speaks, "k")
    assert status == 404
    outcome = classify(provider(fake, speaks), status, headers, body)
    assert (outcome.reason, outcome.blame) == (R.NO_MODEL, Blame.CLIENT)
    fake.set_missing_models([])
    assert (await answer(http, fake, speaks, "k"))[0] == 200
    fake.set_behavior("k-nomodel-1", None)  # the naming convention
    assert (await answer(http, fake, speaks, "k-nomodel-1"))[0] == 404


async def test_missing_models_in_the_sdks(fake: FakeUpstream) -> None:
    fake.set_missing_models(["gpt-4o-mini", "gemini-2.5-flash"])
    client = openai.AsyncOpenAI(api_key="k", base_url=fake.openai_base, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert missing.value.code == "model_not_found"
    await client.close()
    options = genai_types.HttpOptions(base_url=fake.gemini_base, api_version="v1beta")
    gemini = genai.Client(api_key="k", http_options=options)
    with pytest.raises(genai_errors.ClientError) as gone:
        await gemini.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (gone.value.code, gone.value.status) == (404, "NOT_FOUND")
    assert "models/gemini-2.5-flash is not found for API version v1beta" in str(gone.value)


@pytest.mark.parametrize("speaks", DIALECTS)
async def test_context_length_in_each_dialect(
    fake: FakeUpstream, http: aiohttp.ClientSession, speaks: Dialect
) -> None:
    fake.set_context_limits({"gpt-4o-mini": 400, "gemini-2.5-flash": 400})
    assert (await answer(http, fake, speaks, "k"))[0] == 200  # short enough
    status, headers, body = await answer(http, fake, speaks, "k", text="word " * 200)
    assert status == 400
    outcome = classify(provider(fake, speaks), status, headers, body)
    assert (outcome.reason, outcome.blame) == (R.CONTEXT_LENGTH, Blame.CLIENT)
    fake.set_behavior("k", Behavior(context_length=True))  # every call, whatever its length
    assert (await answer(http, fake, speaks, "k"))[0] == 400


async def test_context_length_in_the_sdks(fake: FakeUpstream) -> None:
    fake.set_behavior("k-contextlength-1", None)  # the naming convention
    client = openai.AsyncOpenAI(
        api_key="k-contextlength-1", base_url=fake.openai_base, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as long:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert long.value.code == "context_length_exceeded"
    await client.close()
    options = genai_types.HttpOptions(base_url=fake.gemini_base, api_version="v1beta")
    gemini = genai.Client(api_key="k-contextlength-1", http_options=options)
    with pytest.raises(genai_errors.ClientError) as too_long:
        await gemini.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert too_long.value.status == "INVALID_ARGUMENT"
    assert "exceeds the maximum number of tokens allowed" in str(too_long.value)


async def test_model_faults_only_answer_calls_that_name_a_model(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_behavior("k", Behavior(no_model=True))
    async with http.get(f"{fake.openai_base}/models", headers={"authorization": "Bearer k"}) as r:
        assert r.status == 200


async def test_admin_sets_model_faults(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    admin = f"{fake.url}/_fake/models"
    spec = {"missing": ["gpt-4o-mini"], "context_limits": {"gemini-2.5-flash": 10}}
    async with http.post(admin, json=spec) as response:
        assert response.status == 200
    assert (await answer(http, fake, "openai", "k"))[0] == 404
    assert (await answer(http, fake, "compat", "k"))[0] == 400
    for bad in ({"missing": "gpt"}, {"context_limits": {"m": -1}}, [1]):
        async with http.post(admin, json=bad) as response:
            assert response.status == 400
    async with http.post(f"{fake.url}/_fake/reset") as response:
        assert response.status == 200
    assert (await answer(http, fake, "openai", "k"))[0] == 200
    assert (await answer(http, fake, "compat", "k"))[0] == 200
