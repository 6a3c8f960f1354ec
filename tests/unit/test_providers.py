"""Provider adapters: URLs, auth headers, probes, error shapes, model parsing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llmgateway import providers
from llmgateway.config.settings import GeminiProvider, OpenAILikeProvider
from llmgateway.core.outcomes import ALL_MODELS


def openai_provider(base: str = "https://api.openai.com/v1") -> OpenAILikeProvider:
    return OpenAILikeProvider(
        provider_type="openai_like",
        keys_path="keys/openai",
        api_base_url=base,
        default_model="gpt-4o-mini",
        models={
            "gpt-4o-mini": {
                "endpoint_suffix": "/chat/completions",
                "test_payload": {
                    "messages": [{"role": "user", "content": "ping"}],
                    "max_tokens": 1,
                },
            },
            "text-embedding-3-small": {
                "endpoint_suffix": "/embeddings",
                "test_payload": {"input": "ping"},
            },
        },
    )


def gemini_provider(base: str = "https://generativelanguage.googleapis.com") -> GeminiProvider:
    return GeminiProvider(
        provider_type="gemini",
        keys_path="keys/gemini",
        api_base_url=base,
        default_model="gemini-2.5-flash",
        models={
            "gemini-2.5-flash": {"endpoint_suffix": ":generateContent"},
            "gemini-2.5-pro": {
                "endpoint_suffix": ":generateContent",
                "test_payload": {"contents": [{"parts": [{"text": "ping"}]}]},
            },
        },
    )


OPENAI = openai_provider()
GEMINI = gemini_provider()
G = "https://generativelanguage.googleapis.com"


@pytest.mark.parametrize(
    ("provider", "api", "path", "query", "url"),
    [
        (
            OPENAI,
            "openai",
            "/v1/chat/completions",
            "",
            "https://api.openai.com/v1/chat/completions",
        ),
        (OPENAI, "openai", "/v1/models", "limit=2", "https://api.openai.com/v1/models?limit=2"),
        (
            openai_provider("http://127.0.0.1:8900/v1/"),
            "openai",
            "/v1/embeddings",
            "",
            "http://127.0.0.1:8900/v1/embeddings",
        ),
        (
            GEMINI,
            "gemini",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "alt=sse",
            f"{G}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            GEMINI,
            "gemini",
            "/v1/models/gemini-2.5-flash:generateContent",
            "",
            f"{G}/v1/models/gemini-2.5-flash:generateContent",
        ),
        (GEMINI, "openai", "/v1/chat/completions", "", f"{G}/v1beta/openai/chat/completions"),
        (
            gemini_provider(f"{G}/v1beta/"),
            "gemini",
            "/v1beta/models",
            "pageSize=5&keyword=x",
            f"{G}/v1beta/models?pageSize=5&keyword=x",
        ),
    ],
)
def test_upstream_url(provider: Any, api: providers.Api, path: str, query: str, url: str) -> None:
    assert providers.upstream_url(provider, api, path, query) == url


@pytest.mark.parametrize(
    ("provider", "api", "path"),
    [
        (OPENAI, "gemini", "/v1beta/models/x:generateContent"),
        (OPENAI, "openai", "/v2/chat/completions"),
        (GEMINI, "gemini", "/v2/models"),
        (GEMINI, "openai", "/v1beta/chat/completions"),
    ],
)
def test_upstream_url_refuses_paths_it_cannot_serve(
    provider: Any, api: providers.Api, path: str
) -> None:
    with pytest.raises(ValueError, match="not"):
        providers.upstream_url(provider, api, path, "")


def test_auth_header() -> None:
    assert providers.auth_header(OPENAI, "openai", "sk-x") == ("authorization", "Bearer sk-x")
    assert providers.auth_header(GEMINI, "gemini", "AIza") == ("x-goog-api-key", "AIza")
    assert providers.auth_header(GEMINI, "openai", "AIza") == ("authorization", "Bearer AIza")


def test_openai_probe_adds_the_model() -> None:
    probe = providers.probe_request(OPENAI, "text-embedding-3-small", "sk-x")
    assert (probe.method, probe.url) == ("POST", "https://api.openai.com/v1/embeddings")
    assert probe.headers == {"authorization": "Bearer sk-x", "content-type": "application/json"}
    assert orjson.loads(probe.body) == {"input": "ping", "model": "text-embedding-3-small"}


def test_all_models_probes_the_default_model() -> None:
    probe = providers.probe_request(OPENAI, ALL_MODELS, "sk-x")
    assert probe.url == "https://api.openai.com/v1/chat/completions"
    assert orjson.loads(probe.body)["model"] == "gpt-4o-mini"
    probe = providers.probe_request(GEMINI, ALL_MODELS, "AIza")
    assert probe.url == f"{G}/v1beta/models/gemini-2.5-flash:generateContent"


def test_a_pattern_entry_is_probed_through_default_model() -> None:
    pattern = {"endpoint_suffix": "/responses", "test_payload": {"input": "ping"}}
    provider = OpenAILikeProvider(
        provider_type="openai_like",
        keys_path="keys/openai",
        api_base_url="https://api.openai.com/v1",
        default_model="gpt-4.1-mini",
        models={"gpt-4o": {"endpoint_suffix": "/chat/completions"}, "gpt-4.1*": pattern},
    )
    for entry in ("gpt-4.1*", ALL_MODELS):  # per-entry status, and the one shared status
        probe = providers.probe_request(provider, entry, "sk-x")
        assert probe.url == "https://api.openai.com/v1/responses"
        assert orjson.loads(probe.body) == {"input": "ping", "model": "gpt-4.1-mini"}
    concrete = providers.probe_request(provider, "gpt-4o", "sk-x")
    assert orjson.loads(concrete.body)["model"] == "gpt-4o"
    gemini = GeminiProvider(
        provider_type="gemini",
        keys_path="keys/gemini",
        api_base_url=G,
        default_model="gemini-2.5-flash-lite",
        models={"gemini-2.5-*": {"endpoint_suffix": ":countTokens", "test_payload": {"a": 1}}},
    )
    for entry in ("gemini-2.5-*", ALL_MODELS):
        probe = providers.probe_request(gemini, entry, "AIza")
        assert probe.url == f"{G}/v1beta/models/gemini-2.5-flash-lite:countTokens"
        assert orjson.loads(probe.body) == {"a": 1}


def test_gemini_probe() -> None:
    probe = providers.probe_request(GEMINI, "gemini-2.5-pro", "AIza")
    assert probe.url == f"{G}/v1beta/models/gemini-2.5-pro:generateContent"
    assert probe.headers["x-goog-api-key"] == "AIza"
    assert "authorization" not in probe.headers
    assert orjson.loads(probe.body) == {"contents": [{"parts": [{"text": "ping"}]}]}


def test_empty_test_payload_gets_a_one_token_default() -> None:
    body = orjson.loads(providers.probe_request(GEMINI, "gemini-2.5-flash", "AIza").body)
    assert body["generationConfig"] == {"maxOutputTokens": 1}


def test_probe_of_an_unknown_model_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match=r"'nope' is not configured .* add it under `models`"):
        providers.probe_request(OPENAI, "nope", "sk-x")


def test_auth_probe_lists_models() -> None:
    probe = providers.auth_probe_request(OPENAI, "sk-x")
    assert (probe.method, probe.url, probe.body) == ("GET", "https://api.openai.com/v1/models", b"")
    assert probe.headers == {"authorization": "Bearer sk-x"}
    probe = providers.auth_probe_request(gemini_provider(f"{G}/v1beta"), "AIza")
    assert (probe.url, probe.headers) == (f"{G}/v1beta/models", {"x-goog-api-key": "AIza"})


@pytest.mark.parametrize(
    ("status", "type_"),
    [(400, "invalid_request_error"), (429, "rate_limit_exceeded"), (503, "server_error")],
)
def test_openai_error_body(status: int, type_: str) -> None:
    body = orjson.loads(providers.error_body("openai", status, "nope", code="c"))
    assert body == {"error": {"message": "nope", "type": type_, "param": None, "code": "c"}}


def test_openai_error_body_type_override() -> None:
    body = orjson.loads(providers.error_body("openai", 503, "m", type_="no_healthy_key"))
    assert body["error"]["type"] == "no_healthy_key"
    assert body["error"]["code"] is None


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (413, "INVALID_ARGUMENT"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (502, "UNAVAILABLE"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (599, "INTERNAL"),
    ],
)
def test_gemini_error_body(status: int, name: str) -> None:
    body = orjson.loads(providers.error_body("gemini", status, "m"))
    assert body == {"error": {"code": status, "message": "m", "status": name}}


def test_gemini_error_body_code_becomes_error_info() -> None:
    body = orjson.loads(providers.error_body("gemini", 400, "m", code="API_KEY_INVALID"))
    assert body["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_sse_error_event() -> None:
    event = providers.sse_error_event("openai", 502, "upstream broke")
    assert event.startswith(b"data: {")
    assert event.endswith(b"}\n\n")
    assert orjson.loads(event[6:])["error"]["message"] == "upstream broke"
    event = providers.sse_error_event("gemini", 504, "deadline")
    assert orjson.loads(event[6:])["error"]["status"] == "DEADLINE_EXCEEDED"
