"""Routes under attack, over real sockets against the real gateway: a gateway-wide token's
requests with hostile model names and bodies, names it may not use, and hostile upstreams.

Three providers: `alpha` (OpenAI-like) on a scripted `HostileUpstream`, `beta` (OpenAI-like)
and `gem` (Gemini) on `FakeUpstream`s. Route `fast` is alpha then beta; every attack checks
what the client got (the surface's error shape, never a 500, no token, no pooled key), what
reached each upstream, and that no key was blamed and no breaker opened by a client's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from llmgateway.config.settings import Settings
from llmgateway.core.resilience import BreakerState
from llmgateway.core.stream_commit import PEEK_LIMIT_BYTES
from llmgateway.observe.masking import mask
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.hostile import CLOSE, HostileUpstream, Peer, Request, answer
from tests.helpers import Running, eventually, start_gateway

pytestmark = pytest.mark.security

APP = "gw-hostile-app-token-5c2e9a71d04b"
LIMITED = "gw-hostile-cheap-token-8f1b3d6e2a90"
TOKENS = (APP, LIMITED)
ALPHA_KEYS = ("sk-alphaA-Q9v2Lm4Tx8Rb1Nc6Yw3Kp0a1", "sk-alphaB-H5j7Ds2Fg9Zq4Vu1Xe8Mo0b2")
BETA_KEY = "sk-good-beta-W3n6Pt1Ly5Gk8Rc2Ha9J"
GEM_KEY = "AIza-good-gem-7u4Kq1Wm9Zx3Cv6Bn2Lp8"
SECRETS = (*ALPHA_KEYS, BETA_KEY, GEM_KEY)
MESSAGES = [{"role": "user", "content": "hi"}]
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
    }
)
JSON = (("content-type", "application/json"),)
SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
DATA = b'data: {"choices":[{"index":0,"delta":{"content":"hello"}}]}\n\n'
PEEK_SEC = 1.0
ROUTES = {
    "fast": {
        "targets": [
            {"provider": "alpha", "model": "gpt-a"},
            {"provider": "beta", "model": "gpt-b", "priority": 1},
        ],
        "peek_timeout_sec": PEEK_SEC,
    },
    "cheap": {"targets": [{"provider": "beta", "model": "gpt-b"}]},
    "oa-only": {"targets": [{"provider": "alpha", "model": "gpt-a"}]},
    "smart": {"targets": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
    "patient": {  # a peek timeout past the providers' deadline (6 s)
        "targets": [
            {"provider": "alpha", "model": "gpt-a"},
            {"provider": "beta", "model": "gpt-b", "priority": 1},
        ],
        "peek_timeout_sec": 30,
    },
}


async def reply_ok(request: Request, peer: Peer) -> None:
    """alpha's default: a chat completion."""
    await peer.send(answer(REPLY, headers=JSON))


@dataclass(slots=True)
class Rig:
    """The running gateway and its three upstreams."""

    running: Running
    alpha: HostileUpstream
    beta: FakeUpstream
    gem: FakeUpstream

    @property
    def url(self) -> str:
        return self.running.url

    async def post(
        self,
        path: str,
        body: bytes,
        token: str = APP,
        *,
        google: bool = False,
        headers: Sequence[tuple[str, str]] = (),
    ) -> httpx.Response:
        """POST `body` as it is, with `token` as a Bearer (or `x-goog-api-key`); the answer is
        checked: no pooled key, no gateway token, never a 500."""
        sent = [("x-goog-api-key", token) if google else ("authorization", f"Bearer {token}")]
        sent += [("content-type", "application/json"), *headers]
        async with httpx.AsyncClient(timeout=20) as client:
            response = await client.post(f"{self.url}{path}", content=body, headers=sent)
        check_answer(response)
        return response

    async def chat(self, body: dict[str, Any] | bytes, token: str = APP) -> httpx.Response:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.post("/v1/chat/completions", data, token)

    def upstream_calls(self) -> tuple[int, int, int]:
        """Requests that reached alpha, beta and gem."""
        beta = sum(self.beta.calls_by_key().values())
        return len(self.alpha.seen), beta, sum(self.gem.calls_by_key().values())

    def settled(self) -> bool:
        """Whether no key is in flight any more."""
        providers = self.running.gateway.providers.values()
        return all(p.pool.inflight(k) == 0 for p in providers for k in p.pool.key_ids())

    def assert_intact(self) -> None:
        """Every key healthy or untested, none in flight, every breaker closed, no request
        body still counted against the in-flight budget."""
        assert self.running.app.state.edge.bodies.held == 0
        gateway = self.running.gateway
        now = gateway.clock()
        for name, provider in gateway.providers.items():
            states = {state for (_, state) in provider.pool.counts(now)}
            assert states <= {"healthy", "untested"}, (name, provider.pool.counts(now))
            assert all(provider.pool.inflight(k) == 0 for k in provider.pool.key_ids())
            assert provider.guard.state is BreakerState.CLOSED, name
        assert self.running.cooldowns() == {}

    def assert_no_token_upstream(self) -> None:
        """No gateway token in anything an upstream received (head, query, body)."""
        seen = [s.head + s.body for s in self.alpha.seen]
        for fake in (self.beta, self.gem):
            for secret in fake.calls_by_key():
                last = fake.last_request(secret)
                assert last is not None
                seen.append(f"{last.path}?{dict(last.query)} {dict(last.headers)}".encode())
                seen.append(last.body)
        for data in seen:
            for token in TOKENS:
                assert token.encode() not in data, "a gateway token went upstream"


def check_answer(response: httpx.Response) -> None:
    """Never a 500, no pooled key (nor its masked core) and no gateway token in the answer."""
    assert response.status_code != 500, response.text[:300]
    raw = str(response.headers).encode() + response.content
    for secret in SECRETS:
        core = secret[len(mask(secret).partition("…")[0]) : -4]
        assert secret.encode() not in raw, f"pooled key {mask(secret)} answered"
        assert core.encode() not in raw, f"hidden part of {mask(secret)} answered"
    for token in TOKENS:
        assert token.encode() not in raw, "a gateway token was echoed"


def openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The OpenAI error shape, with `status` and `code`."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    return error


def gemini_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The Gemini error shape, with `status` and the gateway's reason `code`."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert error["code"] == status
    assert error["status"].isupper()
    assert error["details"][0]["reason"] == code, error
    return error


def settings_of(folder: Path, alpha: str, beta: str, gem: str, **alpha_extra: Any) -> Settings:
    policy = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 3, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 2, "backoff_sec": 0.0},
        },
        "circuit_breaker": {"enabled": True, "failure_threshold": 3},
    }

    def provider(kind: str, base: str, keys: Sequence[str], model: str) -> dict[str, Any]:
        suffix = "/chat/completions" if kind == "openai_like" else ":generateContent"
        return {
            "provider_type": kind,
            "keys_path": str(write_keys(folder / "keys" / model, list(keys)).parent),
            "api_base_url": base,
            "default_model": model,
            "models": {model: {"endpoint_suffix": suffix}},
            "timeouts": {"connect": 2.0, "read": 10.0, "total": 6.0},
            "gateway_policy": policy,
        }

    providers = {
        "alpha": {**provider("openai_like", alpha, ALPHA_KEYS, "gpt-a"), **alpha_extra},
        "beta": provider("openai_like", beta, [BETA_KEY], "gpt-b"),
        "gem": provider("gemini", gem, [GEM_KEY], "gemini-2.5-flash"),
    }
    tokens = [
        {"name": "app", "token": APP, "routes": ["*"], "providers": ["alpha", "gem"]},
        {"name": "cheap", "token": LIMITED, "routes": ["cheap*"]},
    ]
    document = {
        "database": {"url": f"sqlite:///{folder / 'gw.db'}"},
        "gateway": {"tokens": tokens},
        "providers": providers,
        "routes": ROUTES,
    }
    return Settings.model_validate(document)


@contextlib.asynccontextmanager
async def started(folder: Path, **alpha_extra: Any) -> AsyncIterator[Rig]:
    async with (
        HostileUpstream(reply_ok) as alpha,
        FakeUpstream(models=("gpt-b",)) as beta,
        FakeUpstream() as gem,
    ):
        settings = settings_of(
            folder, f"{alpha.url}/v1", beta.openai_base, gem.gemini_base, **alpha_extra
        )
        async with start_gateway(settings, seed=3) as running:
            yield Rig(running, alpha, beta, gem)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with started(tmp_path) as served:
        yield served


def chat(model: Any = "fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


# --- client faults ------------------------------------------------------------------------


def _fault(status: int, code: str, message: str) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return answer(orjson.dumps(body), status, JSON)


CLIENT_FAULTS = [
    (400, _fault(400, "invalid_value", "Invalid value for 'temperature'.")),
    (400, _fault(400, "content_policy_violation", "Your request was rejected by the filter.")),
    (404, _fault(404, "not_found", "Unknown parameter path.")),
    (413, _fault(413, "request_too_large", "Request too large.")),
    (422, _fault(422, "unprocessable_entity", "Unprocessable.")),
]


async def test_client_faults_in_a_loop_blame_nothing_and_never_fall_back(rig: Rig) -> None:
    for status, reply in CLIENT_FAULTS * 5:
        rig.alpha.script = reply
        response = await rig.chat(chat())
        assert response.status_code == status, response.text
        assert response.headers["x-llmgateway-target"] == "alpha/gpt-a"
        assert response.headers["x-llmgateway-attempts"] == "1"
    # one call each: no other key, no other target, no breaker
    assert rig.upstream_calls() == (len(CLIENT_FAULTS) * 5, 0, 0)
    rig.assert_intact()


async def test_a_client_fault_in_the_first_event_of_a_stream_is_relayed_not_fallen_back(
    rig: Rig,
) -> None:
    error = b'data: {"error":{"message":"bad tool schema","type":"invalid_request_error",'
    error += b'"code":"invalid_value"}}\n\n'
    rig.alpha.script = [SSE + error, CLOSE]
    for _ in range(5):
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "POST",
                f"{rig.url}/v1/chat/completions",
                json=chat(stream=True),
                headers={"authorization": f"Bearer {APP}"},
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["x-llmgateway-target"] == "alpha/gpt-a"
            body = b""
            with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadTimeout):
                async for piece in response.aiter_bytes():
                    body += piece
                    if b"bad tool schema" in body:
                        break
            assert b"bad tool schema" in body
    assert rig.upstream_calls()[1:] == (0, 0)
    await eventually(rig.settled, within=5)
    rig.assert_intact()


# --- model names and bodies ---------------------------------------------------------------

NOT_FOUND_NAMES = [
    "x" * 200_000,
    "../../fast",
    "fast/../fast",
    "/fast",
    "fast/",
    "alpha/",
    "/gpt-a",
    "alpha//gpt-a",
    "alpha/gpt-a/../../admin",
    "alpha/../beta/gpt-b",
    "beta/gpt-b",  # a provider the token may not address
    "fa%73t",
    "alpha%2Fgpt-a",
    "FAST",
    "fast ",
    "fast\u0000",
    "fast\r\nx-injected: 1",
    "f\u0430st",  # Cyrillic a
    "*",
    "fast*",
]


@pytest.mark.parametrize("model", NOT_FOUND_NAMES, ids=lambda m: repr(m)[:24])
async def test_hostile_model_names_are_not_found_without_a_call(rig: Rig, model: str) -> None:
    response = await rig.chat(chat(model))
    error = openai_error(response, 404, "model_not_found")
    assert len(error["message"]) < 300
    assert "x-injected" not in response.headers
    assert rig.upstream_calls() == (0, 0, 0)
    rig.assert_intact()


BAD_BODIES = [
    (b'{"model": 5, "messages": []}', "invalid_request"),
    (b'{"model": ["fast"], "messages": []}', "invalid_request"),
    (b'{"model": {"$ne": null}, "messages": []}', "invalid_request"),
    (b'{"model": true}', "invalid_request"),
    (b'{"model": null, "messages": []}', "model_required"),
    (b'{"messages": []}', "model_required"),
    (b'{"model": ""}', "model_required"),
    (b"model=fast", "invalid_request"),
    (b'["fast"]', "invalid_request"),
    (b'"fast"', "invalid_request"),
    (b"", "invalid_request"),
    (b'{"model": "fast"', "invalid_request"),
    (b'{"model": "fa\xffst"}', "invalid_request"),
    (b'{"model": "fast", "model": "fast"}', "invalid_request"),
    (b'{"model": "oa-only", "model": "fast"}', "invalid_request"),
    (b'{"model": "fast", "\\u006dodel": "cheap"}', "invalid_request"),
    (b'{"\\u006dodel": "fast", "mod\\u0065l": "cheap"}', "invalid_request"),
    (b'{"model": "fast", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_request"),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES, ids=lambda b: repr(b)[:30])
async def test_bad_bodies_are_refused_in_the_openai_shape_without_a_call(
    rig: Rig, body: bytes, code: str
) -> None:
    response = await rig.chat(body)
    openai_error(response, 400, code)
    assert rig.upstream_calls() == (0, 0, 0)
    rig.assert_intact()


async def test_a_deeply_nested_body_naming_model_twice_is_refused_not_a_crash(rig: Rig) -> None:
    depth = 1000  # under orjson's limit, past Python's recursion limit
    nested = b'{"a":' * depth + b'{"model":"y"}' + b"}" * depth
    body = b'{"model": "fast", "x": ' + nested + b"}"
    response = await rig.chat(body)
    assert response.status_code == 400, response.text[:200]
    assert rig.upstream_calls() == (0, 0, 0)


def _split_at_top_level_model(body: bytes) -> tuple[bytes, bytes]:
    """`body` before and after the value of its last `"model"` key at the top level."""
    at = body.rindex(b'"fast"')
    return body[:at], body[at + len(b'"fast"') :]


NESTED_MODEL_BODIES = [
    # nested `model` keys in messages, tools and metadata; the top-level one last
    b'{"messages":[{"role":"user","content":"hi","model":"keep-me"}],'
    b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
    b'"properties":{"model":{"type":"string","enum":["a","b"]}}}}}],'
    b'"metadata":{"model":"also-kept"},"temperature":0.70000,"model"  :\t"fast"}',
    # the text of a message spelling a model pair
    b'{"messages":[{"role":"user","content":"say \\"model\\": \\"fast\\" {[ "}],"model":"fast"}',
    # an escaped top-level key, and a nested escaped one
    b'{"messages":[{"role":"user","content":"hi","\\u006dodel":"inner"}],"\\u006dodel":"fast"}',
    # top-level model first, nested string models after
    b'{"model":"fast","messages":[{"role":"user","content":"x","model":"fast"}],'
    b'"extra":{"model":"fast"}, "n": 1e2}',
]


@pytest.mark.parametrize("body", NESTED_MODEL_BODIES, ids=range(len(NESTED_MODEL_BODIES)))
async def test_only_the_top_level_model_is_rewritten_byte_for_byte(rig: Rig, body: bytes) -> None:
    response = await rig.chat(body)
    assert response.status_code == 200, response.text[:300]
    assert len(rig.alpha.seen) == 1
    received = rig.alpha.seen[0].body
    if body.startswith(b'{"model":"fast"'):
        expected = b'{"model":"gpt-a"' + body[len(b'{"model":"fast"') :]
    else:
        before, after = _split_at_top_level_model(body)
        expected = before + b'"gpt-a"' + after
    assert received == expected
    assert json.loads(received)["model"] == "gpt-a"
    rig.assert_no_token_upstream()


# --- names a token may not use --------------------------------------------------------------


def _same_apart_from_name(left: httpx.Response, right: httpx.Response, a: str, b: str) -> None:
    assert left.status_code == right.status_code
    assert left.content.replace(a.encode(), b"<name>") == right.content.replace(
        b.encode(), b"<name>"
    )
    skip = {"date", "x-request-id", "content-length"}
    assert {k: v for k, v in left.headers.items() if k not in skip} == {
        k: v for k, v in right.headers.items() if k not in skip
    }


async def test_a_name_the_token_may_not_use_answers_like_one_that_does_not_exist(
    rig: Rig,
) -> None:
    pairs = [("fast", "fasx"), ("oa-only", "oa-onlx"), ("alpha/gpt-a", "alphx/gpt-a")]
    for hidden, missing in pairs:
        left = await rig.chat(chat(hidden), LIMITED)
        right = await rig.chat(chat(missing), LIMITED)
        openai_error(left, 404, "model_not_found")
        _same_apart_from_name(left, right, hidden, missing)
        async with httpx.AsyncClient(timeout=10) as client:
            auth = {"authorization": f"Bearer {LIMITED}"}
            one = await client.get(f"{rig.url}/v1/models/{hidden}", headers=auth)
            other = await client.get(f"{rig.url}/v1/models/{missing}", headers=auth)
        _same_apart_from_name(one, other, hidden, missing)
        assert one.status_code == 404
    # a provider not in the token's `providers` (beta) is no more reachable than a made-up one
    left, right = await rig.chat(chat("beta/gpt-b")), await rig.chat(chat("betx/gpt-b"))
    _same_apart_from_name(left, right, "beta", "betx")
    gem = "/v1beta/models/{}:generateContent"
    generate = orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    left = await rig.post(gem.format("smart"), generate, LIMITED, google=True)
    right = await rig.post(gem.format("smarx"), generate, LIMITED, google=True)
    gemini_error(left, 404, "model_not_found")
    _same_apart_from_name(left, right, "smart", "smarx")
    assert rig.upstream_calls() == (0, 0, 0)


async def test_gemini_native_cannot_reach_an_openai_like_only_route(rig: Rig) -> None:
    generate = orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    for path in (
        "/v1beta/models/oa-only:generateContent",
        "/v1beta/models/oa-only:streamGenerateContent?alt=sse",
        "/v1beta/models/alpha/gpt-a:generateContent",
        "/v1/models/oa-only:generateContent",
    ):
        response = await rig.post(path, generate, google=True)
        gemini_error(response, 404, "model_not_found")
    ok = await rig.post("/v1beta/models/smart:generateContent", generate, google=True)
    assert ok.status_code == 200
    assert rig.upstream_calls() == (0, 0, 1)


async def test_hostile_gemini_paths_are_refused_in_the_gemini_shape(rig: Rig) -> None:
    generate = orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    for path, status, code in (
        ("/v1beta/models/" + "m" * 60_000 + ":generateContent", 404, "model_not_found"),
        ("/v1beta/models/..%2Fsmart:generateContent", 400, "invalid_path"),
        ("/v1beta/models/smart%3AgenerateContent", 404, "not_found"),
        ("/v1beta/models/:generateContent", 404, "not_found"),
        ("/v1beta/models/smart", 404, "not_found"),
    ):
        response = await rig.post(path, generate, google=True)
        error = gemini_error(response, status, code)
        assert len(error["message"]) < 300
    assert rig.upstream_calls() == (0, 0, 0)


# --- secrets --------------------------------------------------------------------------------


async def test_no_gateway_token_upstream_and_no_upstream_key_to_the_client(rig: Rig) -> None:
    leaky = "The key {} (Bearer {}) was refused for this request."

    async def echo_key(request: Request, peer: Peer) -> None:
        head = request.head.decode("latin-1")
        key = next(k for k in ALPHA_KEYS if k in head)
        message = leaky.format(key, key)
        body = {"error": {"message": message, "type": "server_error", "code": None}}
        fields = (*JSON, ("x-echo-key", key), ("set-cookie", f"k={key}"))
        await peer.send(answer(orjson.dumps(body), 503, fields))

    headers = [("x-api-key", APP), ("api-key", APP), ("cookie", APP)]
    rig.alpha.script = echo_key
    # alpha fails with the key in its error: beta answers
    fell = await rig.post("/v1/chat/completions?key=" + APP, orjson.dumps(chat()), APP)
    assert fell.status_code == 200, fell.text
    assert fell.headers["x-llmgateway-target"] == "beta/gpt-b"
    # one target only: alpha's error is the answer, in the gateway's words
    failed = await rig.post(
        "/v1/chat/completions", orjson.dumps(chat("oa-only")), APP, headers=headers
    )
    assert failed.status_code >= 500
    assert "x-echo-key" not in failed.headers
    assert "set-cookie" not in failed.headers
    # the Gemini way: the token as `?key=` and as x-goog-api-key
    generate = orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    async with httpx.AsyncClient(timeout=10) as client:
        native = await client.post(
            f"{rig.url}/v1beta/models/smart:generateContent?key={APP}&alt=json", content=generate
        )
    check_answer(native)
    assert native.status_code == 200
    assert rig.gem.key_in_url == 0
    rig.assert_no_token_upstream()


# --- hostile streams under first_event ------------------------------------------------------


@dataclass(slots=True)
class Streamed:
    status: int
    headers: dict[str, str]
    first_at: float  # seconds from the request to the first body bytes
    first: bytes  # the first body chunk the gateway sent
    body: bytes


async def stream(rig: Rig, model: str = "fast", enough: int = 1) -> Streamed:
    """A streamed chat over a raw socket: the first chunk the gateway wrote (its size is what
    it held back), then up to `enough` bytes or the end."""
    body = orjson.dumps(chat(model, stream=True))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {APP}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(rig.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    try:
        writer.write(head + body)
        async with asyncio.timeout(20):
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            fields = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if fields.get("transfer-encoding") != "chunked":
                whole = await reader.readexactly(int(fields["content-length"]))
                return Streamed(status, fields, 0.0, b"", whole)
            chunks: list[bytes] = []
            first_at = 0.0
            while sum(map(len, chunks)) < enough:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                chunks.append((await reader.readexactly(size + 2))[:-2])
                first_at = first_at or time.monotonic() - began
        data = b"".join(chunks)
        for secret in SECRETS:
            assert secret.encode() not in raw + data
        return Streamed(status, fields, first_at, chunks[0] if chunks else b"", data)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def forever(piece: bytes, pause: float) -> Any:
    """A 200 event stream sending `piece` every `pause` seconds until the gateway leaves."""

    async def script(request: Request, peer: Peer) -> None:
        with contextlib.suppress(ConnectionError):
            await peer.send(SSE)
            while True:
                await peer.send(piece)
                await asyncio.sleep(pause)
        peer.close()

    return script


async def test_a_stream_of_comments_only_is_committed_at_the_peek_timeout(rig: Rig) -> None:
    rig.alpha.script = forever(b": keep-alive\n\n", 0.05)
    got = await stream(rig)
    assert got.status == 200
    assert got.headers["x-llmgateway-target"] == "alpha/gpt-a"  # committed: no fallback
    assert PEEK_SEC * 0.8 <= got.first_at <= PEEK_SEC + 1.5
    assert got.first.startswith(b": keep-alive")
    assert len(got.first) <= PEEK_LIMIT_BYTES
    assert rig.upstream_calls()[1] == 0


async def test_a_flood_of_comments_is_held_back_at_most_64_kib_and_one_chunk(rig: Rig) -> None:
    rig.alpha.script = forever(b": " + b"k" * 8190 + b"\n", 0.0)
    got = await stream(rig)
    assert got.status == 200
    assert got.first_at < PEEK_SEC  # the limit, not the timeout, committed it
    assert PEEK_LIMIT_BYTES <= len(got.first) <= 2 * PEEK_LIMIT_BYTES
    assert rig.upstream_calls()[1] == 0


async def test_a_first_event_of_1_mib_without_a_newline_is_committed_at_the_limit(
    rig: Rig,
) -> None:
    rig.alpha.script = forever(b"data: " + b"x" * (1 << 20), 0.5)
    got = await stream(rig, enough=1 << 20)
    assert got.status == 200
    assert len(got.first) <= 2 * PEEK_LIMIT_BYTES  # never the whole event held
    assert got.body.startswith(b"data: xxxx")


@pytest.mark.parametrize(
    "frame",
    [
        b"event: error\ndata: " + b"{" * 50_000 + b"\n\n",
        b"event: error\ndata: \xff\xfe\x00garbage" + b"\x80" * 30_000 + b"\n\n",
        b"event: error\ndata: " + b"[" * 20_000 + b"]" * 20_000 + b"\n\n",
        b'data: {"error": {"message": "' + b"A" * 60_000 + b'", "code": 500}}\n\n',
        b'data: {"error": {"code": "99999999999999999999999", "message": 1e999}}\n\n',
    ],
    ids=["braces", "binary", "deep", "huge-message", "odd-code"],
)
async def test_a_garbage_error_frame_falls_back(rig: Rig, frame: bytes) -> None:
    rig.alpha.script = [SSE + frame, 0.2]
    got = await stream(rig, enough=1 << 16)
    assert got.status == 200
    assert got.headers["x-llmgateway-target"] == "beta/gpt-b"
    assert b"data:" in got.body
    assert rig.upstream_calls()[1] == 1


async def test_an_error_frame_echoing_the_key_on_the_last_target_is_not_relayed(
    rig: Rig,
) -> None:
    async def echo_key(request: Request, peer: Peer) -> None:
        head = request.head.decode("latin-1")
        key = next(k for k in ALPHA_KEYS if k in head)
        frame = {"error": {"message": f"overloaded; key {key}", "type": "server_error"}}
        await peer.send(SSE + b"data: " + orjson.dumps(frame) + b"\n\n")
        peer.close()

    rig.alpha.script = echo_key
    response = await rig.chat(chat("oa-only", stream=True))
    assert response.status_code == 502
    openai_error(response, 502, "bad_upstream_response")


async def test_a_stream_stalled_before_its_first_event_is_bounded_by_the_deadline(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as rig:
        rig.alpha.script = forever(b"", 30.0)  # the head, then nothing
        began = time.monotonic()
        got = await stream(rig, enough=1 << 20)
        took = time.monotonic() - began
        assert got.status == 200
        assert got.headers["x-llmgateway-target"] == "alpha/gpt-a"
        assert took <= 6.0 + 2.0  # the provider's total deadline, then the stream ends
        assert rig.upstream_calls()[1] == 0


async def test_a_path_no_target_serves_is_the_clients_fault_not_a_lack_of_keys(
    rig: Rig,
) -> None:
    """Was 503 `no_healthy_key` (which SDKs retry, and counted as the route's exhaustion)."""
    generate = orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    for path, google in (
        ("/v1/nonsense", False),
        ("/v1/files", False),
        ("/v1beta/models/smart:bogusMethod", True),
    ):
        body = generate if google else orjson.dumps(chat())
        response = await rig.post(path, body, google=google)
        if google:
            error = gemini_error(response, 404, "not_found")
        else:
            error = openai_error(response, 404, "not_found")
        assert "No target of" in error["message"]
        assert "gpt-a" not in error["message"]  # a target's model is not the client's business
        assert "gemini-2.5-flash" not in error["message"]
    assert rig.upstream_calls() == (0, 0, 0)
    registry = rig.running.app.state.edge.attempt_loop.metrics.registry
    exhausted = [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name == "llmgateway_route_exhausted_total"
    ]
    assert exhausted == []
    rig.assert_intact()


@pytest.mark.parametrize("attempt", range(3))
async def test_a_stream_undecided_at_the_deadline_is_a_504_never_a_committed_200(
    rig: Rig, attempt: int
) -> None:
    """The peek's wait ends at the deadline, where the upstream read times out too: whichever
    fires first, the answer is the timeout, not an empty 200 failing in-band at once."""
    rig.alpha.script = forever(b": thinking\n", 2.0)
    began = time.monotonic()
    got = await stream(rig, "patient", enough=1 << 20)
    assert got.status == 504, got
    assert time.monotonic() - began <= 6.0 + 1.0
    assert json.loads(got.body)["error"]["code"] == "timeout"
    assert rig.upstream_calls()[1] == 0  # no time was left for beta
