"""The fake upstream over real loopback HTTP: the official SDKs parse it, faults by key behave,
the admin API drives it, and classify() reads its errors the way it reads the real ones."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
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
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.observe.masking import fingerprint
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.faults import RetryStyle
from llmgateway.testing.wire import text
from llmgateway.transport.errors import classify_exchange

GOOD = "sk-good-0000000000000001"
GEMINI_GOOD = "AIza-good-000000000000001"


@pytest.fixture
def fake_options() -> dict[str, Any]:
    """Four chunks a stream (the `fake` fixture's upstream)."""
    return {"chunks": 4}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def openai_provider(fake: FakeUpstream) -> OpenAILikeProvider:
    return OpenAILikeProvider(
        provider_type="openai_like",
        keys_path="keys/openai",
        api_base_url=fake.openai_base,
        default_model="gpt-4o-mini",
        models={"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
    )


def gemini_provider(fake: FakeUpstream) -> GeminiProvider:
    return GeminiProvider(
        provider_type="gemini",
        keys_path="keys/gemini",
        api_base_url=fake.gemini_base,
        default_model="gemini-2.5-flash",
        models={"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
    )


def openai_client(
    fake: FakeUpstream, key: str = GOOD, base: str | None = None
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=base or fake.openai_base, max_retries=0)


def genai_client(fake: FakeUpstream, key: str = GEMINI_GOOD) -> genai.Client:
    options = genai_types.HttpOptions(base_url=fake.gemini_base, api_version="v1beta")
    return genai.Client(api_key=key, http_options=options)


async def chat(
    http: aiohttp.ClientSession, fake: FakeUpstream, key: str, **body: object
) -> tuple[int, dict[str, str], bytes]:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]} | body
    headers = {"authorization": f"Bearer {key}"}
    async with http.post(
        f"{fake.openai_base}/chat/completions", json=payload, headers=headers
    ) as r:
        return r.status, dict(r.headers), await r.read()


async def generate(
    http: aiohttp.ClientSession, fake: FakeUpstream, key: str
) -> tuple[int, dict[str, str], bytes]:
    url = f"{fake.url}/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    async with http.post(url, json=body, headers={"x-goog-api-key": key}) as r:
        return r.status, dict(r.headers), await r.read()


async def collect_events(response: aiohttp.ClientResponse, events: list[bytes]) -> None:
    async for line in response.content:
        if line.startswith(b"data:"):
            events.append(line)


def classified(provider: ProviderSettings, answer: tuple[int, dict[str, str], bytes]) -> Outcome:
    status, headers, body = answer
    return classify(provider, status, headers, body)


# --- the official SDKs parse the fake -------------------------------------------------------------


async def test_openai_sdk_chat_stream_embeddings_models(fake: FakeUpstream) -> None:
    client = openai_client(fake)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"}
    ]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert completion.choices[0].message.content == text(4)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4

    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == text(4)
    assert usage is not None
    assert usage.total_tokens == 9

    embedding = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(embedding.data) == 2
    assert embedding.data[1].embedding[:2] == [0.125, -0.25]

    models = await client.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    assert fake.calls(GOOD) == 4
    seen = fake.last_request(GOOD)
    assert seen is not None
    assert seen.headers["authorization"] == f"Bearer {GOOD}"
    await client.close()


async def test_openai_sdk_errors(fake: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as bad:
        await openai_client(fake, "sk-invalid-00000000001").models.list()
    assert bad.value.code == "invalid_api_key"
    assert "sk-invalid-00000000001" not in str(bad.value)
    with pytest.raises(openai.RateLimitError) as quota:
        await openai_client(fake, "sk-noquota-0000000001").models.list()
    assert quota.value.code == "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as limited:
        await openai_client(fake, "sk-ratelimited-000001").models.list()
    assert limited.value.response.headers["retry-after"] == "5"


async def test_models_lists_show_the_names_set_and_gemini_pages_them(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    names = [f"gemini-x-{i:03d}" for i in range(120)]
    fake.set_models(names)
    listed = await openai_client(fake).models.list()
    assert [m.id for m in listed.data] == names
    sdk = [m.name async for m in await genai_client(fake).aio.models.list()]
    assert sdk == [f"models/{name}" for name in names]
    headers = {"x-goog-api-key": GEMINI_GOOD}
    async with http.get(f"{fake.url}/v1beta/models", headers=headers) as response:
        first = await response.json()
    assert (len(first["models"]), first["nextPageToken"]) == (50, "50")
    last_page = f"{fake.url}/v1beta/models?pageSize=1000&pageToken=100"
    async with http.get(last_page, headers=headers) as response:
        last = await response.json()
    assert [m["name"] for m in last["models"]] == [f"models/{n}" for n in names[100:]]
    assert "nextPageToken" not in last


async def test_a_missing_key_is_refused(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.openai_base}/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "missing_api_key"
    async with http.get(f"{fake.url}/v1beta/models") as response:
        assert response.status == 403
        assert (await response.json())["error"]["status"] == "PERMISSION_DENIED"
    assert fake.calls_by_key() == {}


async def test_genai_sdk_generate_stream_models(fake: FakeUpstream) -> None:
    client = genai_client(fake)
    answer = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert answer.text == text(4)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.total_token_count == 9

    pieces = [
        chunk.text or ""
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
    ]
    assert pieces == ["Hello", " from", " the", " fake"]

    names = [m.name async for m in await client.aio.models.list()]
    assert "models/gemini-2.5-flash" in names

    seen = fake.last_request(GEMINI_GOOD)
    assert seen is not None
    assert seen.headers["x-goog-api-key"] == GEMINI_GOOD
    assert "key" not in seen.query
    assert fake.key_in_url == 0


async def test_genai_sdk_invalid_key(fake: FakeUpstream) -> None:
    client = genai_client(fake, "AIza-invalid-0000000001")
    with pytest.raises(genai_errors.ClientError) as bad:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (bad.value.code, bad.value.status) == (400, "INVALID_ARGUMENT")
    assert "API_KEY_INVALID" in str(bad.value.details)


async def test_gemini_openai_compatible_endpoint(fake: FakeUpstream) -> None:
    client = openai_client(fake, GEMINI_GOOD, base=f"{fake.url}/v1beta/openai")
    completion = await client.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == text(4)
    with pytest.raises(openai.BadRequestError):
        await openai_client(fake, "AIza-invalid-01", base=f"{fake.url}/v1beta/openai").models.list()
    await client.close()


# --- keys travel in headers -----------------------------------------------------------------------


async def test_a_key_in_the_url_is_refused_and_counted(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.url}/v1beta/models/gemini-2.5-flash:generateContent?key={GEMINI_GOOD}"
    async with http.post(url, json={"contents": []}) as response:
        assert response.status == 400
        assert "x-goog-api-key" in (await response.json())["error"]["message"]
    assert fake.key_in_url == 1
    assert fake.calls(GEMINI_GOOD) == 1


# --- faults by key, and what classify() makes of them ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("k-invalid-1", ErrorReason.INVALID_KEY),
        ("k-noquota-1", ErrorReason.NO_QUOTA),
        ("k-ratelimited-1", ErrorReason.RATE_LIMITED),
        ("k-good-1", None),
    ],
)
async def test_named_faults_classify_like_the_real_thing(
    fake: FakeUpstream, http: aiohttp.ClientSession, key: str, reason: ErrorReason | None
) -> None:
    assert classified(openai_provider(fake), await chat(http, fake, key)).reason is reason
    assert classified(gemini_provider(fake), await generate(http, fake, key)).reason is reason


@pytest.mark.parametrize("style", ["retry-after", "retry-after-ms", "x-ratelimit", "retry-delay"])
async def test_retry_hint_styles(
    fake: FakeUpstream, http: aiohttp.ClientSession, style: RetryStyle
) -> None:
    fake.set_behavior("k", Behavior(rate_limited=True, retry_after=2.5, retry_style=style))
    outcome = classified(gemini_provider(fake), await generate(http, fake, "k"))
    assert (outcome.reason, outcome.retry_after) == (ErrorReason.RATE_LIMITED, 2.5)
    if style != "retry-delay":  # retryDelay lives in Gemini's body only
        outcome = classified(openai_provider(fake), await chat(http, fake, "k"))
        assert (outcome.reason, outcome.retry_after) == (ErrorReason.RATE_LIMITED, 2.5)


async def test_rate_limit_for_the_first_calls_only(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.set_behavior("k", Behavior(rate_limited=True, rate_limit_calls=2))
    statuses = [(await chat(http, fake, "k"))[0] for _ in range(4)]
    assert statuses == [429, 429, 200, 200]


async def test_deadlines_follow_the_injected_clock(http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    async with FakeUpstream(clock=lambda: now[0]) as fake:
        fake.set_behavior("k", Behavior(rate_limited=True, rate_limit_until=1010.0))
        assert (await chat(http, fake, "k"))[0] == 429
        now[0] = 1010.0
        assert (await chat(http, fake, "k"))[0] == 200

        fake.set_outage(503, seconds=5)
        status, headers, body = await generate(http, fake, "other")
        assert status == 503
        assert classify(gemini_provider(fake), status, headers, body).blame is Blame.PROVIDER
        now[0] = 1015.0
        assert (await generate(http, fake, "other"))[0] == 200
        fake.set_outage(500)
        assert (await chat(http, fake, "k"))[0] == 500
        fake.clear_outage()
        assert (await chat(http, fake, "k"))[0] == 200


async def test_error_rate_is_seeded(http: aiohttp.ClientSession) -> None:
    async with FakeUpstream(seed=7) as fake:
        fake.set_behavior("k", Behavior(error_rate=0.5, error_status=502))
        statuses = [(await chat(http, fake, "k"))[0] for _ in range(12)]
    draws = random.Random(7)
    assert statuses == [502 if draws.random() < 0.5 else 200 for _ in range(12)]
    assert 200 in statuses
    assert 502 in statuses


@pytest.mark.parametrize("stream", [True, False])
async def test_dropped_mid_body_is_a_stream_disconnect(
    fake: FakeUpstream, http: aiohttp.ClientSession, stream: bool
) -> None:
    fake.set_behavior("k", Behavior(drop_after_chunks=2))
    headers = {"authorization": "Bearer k"}
    body = {"model": "m", "stream": stream}
    events: list[bytes] = []
    async with http.post(f"{fake.openai_base}/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError) as broken:
            await collect_events(r, events)
    if stream:
        assert len(events) == 2
    outcome = classify_exchange(openai_provider(fake), 200, {}, b"", broken.value)
    assert (outcome.reason, outcome.blame) == (ErrorReason.STREAM_DISCONNECT, Blame.PROVIDER)


async def test_hanging_keys_never_answer_and_are_counted_open(
    http: aiohttp.ClientSession,
) -> None:
    fake = FakeUpstream()
    await fake.start()
    try:
        timeout = aiohttp.ClientTimeout(total=0.3)
        for _ in range(2):
            with pytest.raises(TimeoutError):
                async with http.get(
                    f"{fake.openai_base}/models",
                    headers={"authorization": "Bearer k-hang-1"},
                    timeout=timeout,
                ) as response:
                    await response.read()
        assert fake.calls("k-hang-1") == 2
        assert fake.peak_open_requests >= 1
    finally:
        await fake.stop()
    assert fake.open_requests == 0


async def test_streams_are_framed_like_the_providers(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    _, headers, body = await chat(http, fake, "k", stream=True)
    assert headers["Content-Type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 5
    url = f"{fake.url}/v1/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(url, json={}, headers={"x-goog-api-key": "k"}) as response:
        array = orjson.loads(await response.read())  # without alt=sse: one JSON array
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in array] == [
        "Hello",
        " from",
        " the",
        " fake",
    ]


# --- the admin API --------------------------------------------------------------------------------


async def test_admin_api(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    admin = f"{fake.url}/_fake"
    async with http.post(f"{admin}/behaviors", json={"k": {"invalid": True}}) as response:
        assert response.status == 200
    assert (await chat(http, fake, "k"))[0] == 401

    async with http.post(f"{admin}/behaviors", json={"k": {"invalidd": True}}) as response:
        assert response.status == 400
        assert "unknown field(s) ['invalidd']" in (await response.json())["error"]
    async with http.post(f"{admin}/behaviors", json={"k": {"delay": "soon"}}) as response:
        assert response.status == 400
    async with http.post(f"{admin}/behaviors", json=[1]) as response:
        assert response.status == 400

    spec = {"rate_limited": True, "rate_limit_for_sec": 3600, "retry_style": "retry-after-ms"}
    async with http.post(f"{admin}/behaviors", json={"k": spec, "j": None}) as response:
        assert response.status == 200
    status, headers, _ = await chat(http, fake, "k")
    assert (status, headers["retry-after-ms"]) == (429, "1000")

    async with http.post(f"{admin}/outage", json={"status": 503}) as response:
        assert response.status == 200
    assert (await chat(http, fake, "j"))[0] == 503
    async with http.post(f"{admin}/outage", json={"status": 200}) as response:
        assert response.status == 400
    async with http.post(f"{admin}/outage", json={}) as response:
        assert response.status == 200
    assert (await chat(http, fake, "j"))[0] == 200

    async with http.get(f"{admin}/stats") as response:
        stats = await response.json()
    assert stats["calls_by_fingerprint"] == {fingerprint("k"): 2, fingerprint("j"): 2}
    assert stats["total_calls"] == 4
    assert stats["open_requests"] == 0

    async with http.post(f"{admin}/reset") as response:
        assert response.status == 200
    assert fake.calls_by_key() == {}
    assert (await chat(http, fake, "k"))[0] == 200


# --- as its own process ---------------------------------------------------------------------------


def _interruptible() -> None:
    # Ctrl-C's default, whatever this process inherited: a shell starting the suite in the
    # background (`pytest &`) ignores SIGINT in it, and an ignored SIGINT is inherited
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_runs_it_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "llmgateway", "fake-upstream", "--port", "0", "--chunks", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("fake upstream listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1].strip()
        client = openai.OpenAI(api_key="sk-good", base_url=f"{url}/v1", max_retries=0)
        completion = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == text(2)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="sk-invalid-x", base_url=f"{url}/v1", max_retries=0).models.list()
    finally:
        process.send_signal(2)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in errors
