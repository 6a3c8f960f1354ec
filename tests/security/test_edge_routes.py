"""Only the provider's own API is reachable through a pooled key, over a real socket against
the real gateway.

Routes whose objects belong to one upstream key (files, batches, stored responses, assistants,
cached contents, tuned models) and the account's administration are answered 404 before a key
is taken. A route the operator added (`gateway_policy.allowed_routes`) reaches the upstream,
and its 401/403 blames no key: the client gets 403 `forbidden` in the gateway's own words,
never the upstream's body. A model's own `endpoint_suffix` route serves that model alone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from llmgateway.testing.hostile import answer
from tests.security.edge import (
    CHAT,
    GENERATE,
    JSON,
    OPENAI_KEYS,
    Rig,
    gemini_error,
    openai_error,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

OPENAI_ROUTES = ["POST /v1/uploads", "GET /v1/uploads/*"]
GEMINI_ROUTES = ["GET /v1beta/corpora/*"]

NOT_OPENAI = [
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-abc123"),
    ("GET", "/v1/files/file-abc123/content"),
    ("DELETE", "/v1/files/file-abc123"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_123"),
    ("GET", "/v1/responses/resp_123"),
    ("DELETE", "/v1/responses/resp_123"),
    ("GET", "/v1/responses/resp_123/input_items"),
    ("POST", "/v1/responses/resp_123/cancel"),
    ("GET", "/v1/chat/completions"),  # stored completions of the key's account
    ("GET", "/v1/chat/completions/chatcmpl-123"),
    ("POST", "/v1/assistants"),
    ("GET", "/v1/assistants"),
    ("POST", "/v1/threads/runs"),
    ("POST", "/v1/vector_stores"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc123"),
    ("GET", "/v1/organization/users"),
    ("GET", "/v1/organization/api_keys"),
    ("POST", "/v1/organization/admin_api_keys"),
    ("GET", "/v1/organization/costs"),
    ("POST", "/v1/uploads/upload_abc/parts"),  # only the exact `POST /v1/uploads` is allowed
    ("POST", "/v1/models/gemini-2.5-flash:generateContent"),
    ("POST", "/v1/rerank/x"),
]
NOT_GEMINI = [
    ("POST", "/v1beta/cachedContents"),
    ("GET", "/v1beta/cachedContents"),
    ("GET", "/v1beta/cachedContents/abc"),
    ("DELETE", "/v1beta/cachedContents/abc"),
    ("POST", "/v1beta/files"),
    ("GET", "/v1beta/files"),
    ("GET", "/v1beta/files/abc"),
    ("POST", "/v1beta/tunedModels/x:generateContent"),
    ("GET", "/v1beta/tunedModels"),
    ("DELETE", "/v1beta/tunedModels/x"),
    ("POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent"),
    ("GET", "/v1beta/batches/abc"),
    ("GET", "/v1beta/operations"),
    ("POST", "/v1beta/corpora"),  # only `GET /v1beta/corpora/*` is allowed
    ("DELETE", "/v1beta/corpora/abc"),
    ("POST", "/v1/cachedContents"),
    ("POST", "/v1/tunedModels/x:generateContent"),
]
NOT_GEMINI_AS_OPENAI = [  # a Gemini token as a Bearer: Gemini's OpenAI-compatible endpoint
    ("POST", "/v1/files"),
    ("POST", "/v1/batches"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/audio/speech"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    folder = tmp_path_factory.mktemp("routes")
    async with running_rig(
        folder,
        openai_policy={"allowed_routes": OPENAI_ROUTES},
        gemini_policy={"allowed_routes": GEMINI_ROUTES},
    ) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


@pytest.mark.parametrize(("method", "path"), NOT_OPENAI)
async def test_only_the_openai_api_is_reachable(rig: Rig, method: str, path: str) -> None:
    refused = await rig.send(method, path, [("content-type", "application/json")], CHAT)
    openai_error(refused, 404, "not_found")
    rig.assert_untouched()


@pytest.mark.parametrize(("method", "path"), NOT_GEMINI)
async def test_only_the_gemini_api_is_reachable(rig: Rig, method: str, path: str) -> None:
    refused = await rig.send(method, path, body=GENERATE, token="gemini", as_google=True)
    gemini_error(refused, 404, "not_found")
    rig.assert_untouched()


@pytest.mark.parametrize(("method", "path"), NOT_GEMINI_AS_OPENAI)
async def test_only_the_routes_of_geminis_openai_endpoint_are_reachable(
    rig: Rig, method: str, path: str
) -> None:
    refused = await rig.send(method, path, body=CHAT, token="gemini")
    openai_error(refused, 404, "not_found")
    rig.assert_untouched()


async def test_google_genai_with_an_openai_token_reaches_nothing(rig: Rig) -> None:
    """The google-genai SDK pointed at the gateway with the OpenAI provider's token."""
    native = "/v1beta/models/gemini-2.5-flash:generateContent"
    refused = await rig.send("POST", native, body=GENERATE, as_google=True)
    gemini_error(refused, 404, "not_found")
    refused = await rig.send(
        "POST", native.replace("/v1beta", "/v1"), body=GENERATE, as_google=True
    )
    openai_error(refused, 404, "not_found")
    rig.assert_untouched()


async def test_a_model_is_described_by_the_gateway_itself(rig: Rig) -> None:
    described = await rig.send("GET", "/v1/models/gpt-4o-mini")
    assert described.status == 200
    assert described.json()["id"] == "gpt-4o-mini"
    openai_error(await rig.send("GET", "/v1/models/gpt-5-secret"), 404, "model_not_found")
    rig.assert_untouched()


async def test_an_allowed_route_reaches_the_upstream(rig: Rig) -> None:
    answered = await rig.send("GET", "/v1/uploads/upload_abc")
    assert answered.status == 200
    assert rig.upstream_head().startswith(b"GET /v1/uploads/upload_abc HTTP/1.1\r\n")
    rig.reset()
    answered = await rig.send("GET", "/v1beta/corpora/c1", token="gemini", as_google=True)
    assert answered.status == 200
    assert rig.upstream_head().startswith(b"GET /v1beta/corpora/c1 HTTP/1.1\r\n")
    rig.assert_intact()


INVALID_KEY = orjson.dumps(
    {
        "error": {
            "message": f"Incorrect API key provided: {OPENAI_KEYS[0][:7]}****. See the docs.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)
GEMINI_INVALID = orjson.dumps(
    {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID"}],
        }
    }
)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "body",
    [INVALID_KEY, GEMINI_INVALID, b"", b"Forbidden"],
    ids=["openai", "gemini", "empty", "text"],
)
async def test_a_refusal_on_an_allowed_route_blames_no_key(
    rig: Rig, status: int, body: bytes
) -> None:
    rig.reset(answer(body, status=status, headers=JSON))
    refused = await rig.send("POST", "/v1/uploads", body=b'{"purpose":"batch"}')
    error = openai_error(refused, 403, "forbidden")
    assert body not in refused.body or not body
    assert "API key" not in error["message"]
    assert len(rig.upstream.seen) == 1  # not retried on another key
    rig.reset(answer(body, status=status, headers=JSON))
    refused = await rig.send("GET", "/v1beta/corpora/c1", token="gemini", as_google=True)
    gemini_error(refused, 403, "forbidden")
    assert len(rig.upstream.seen) == 1
    rig.assert_intact()


@pytest.mark.parametrize("version", ["/v1beta", "/v1"])
async def test_a_models_own_suffix_serves_that_model_alone(rig: Rig, version: str) -> None:
    predict = f"{version}/models/imagen-3.0-generate-002:predict"
    answered = await rig.send("POST", predict, body=b"{}", token="gemini", as_google=True)
    assert answered.status == 200
    assert rig.upstream_head().startswith(f"POST {predict} HTTP/1.1\r\n".encode())
    rig.reset()
    for other in ("gemini-2.5-flash", "gemini-2.5-pro", "imagen-4.0"):
        path = f"{version}/models/{other}:predict"
        refused = await rig.send("POST", path, body=b"{}", token="gemini", as_google=True)
        gemini_error(refused, 404, "model_not_found")
    rig.assert_untouched()


async def test_an_openai_models_own_suffix_serves_that_model_alone(rig: Rig) -> None:
    answered = await rig.send("POST", "/v1/rerank", body=b'{"model":"rerank-1","query":"q"}')
    assert answered.status == 200
    assert rig.upstream_head().startswith(b"POST /v1/rerank HTTP/1.1\r\n")
    rig.reset()
    for model in ("gpt-4o-mini", "rerank-2"):
        body = orjson.dumps({"model": model, "query": "q"})
        openai_error(await rig.send("POST", "/v1/rerank", body=body), 404, "model_not_found")
    openai_error(await rig.send("POST", "/v1/rerank", body=b'{"query":"q"}'), 400, "model_required")
    rig.assert_untouched()
