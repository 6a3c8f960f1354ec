"""Google Gemini: native URLs (`/v1beta/…`, `/v1/…`), its OpenAI-compatible endpoint, probes,
error bodies, and reading the model from a request path.

`api_base_url` is the host root (`https://generativelanguage.googleapis.com`); a trailing
version segment (the original project's style) is tolerated and dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmgateway.config.settings import ModelSettings
from llmgateway.providers.openai import under

_DEFAULT_PROBE: dict[str, Any] = {
    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
    "generationConfig": {"maxOutputTokens": 1},
}

# google.rpc.Code names by HTTP status, as Gemini reports them in `error.status`.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def root(base: str) -> str:
    """The host root of a Gemini base URL (`…/v1beta` and `…/v1` dropped)."""
    base = base.rstrip("/")
    for version in ("/v1beta", "/v1"):
        if base.endswith(version):
            return base[: -len(version)]
    return base


def upstream_url(base: str, api: str, path: str) -> str:
    """The upstream URL (without query): native paths keep the client's version segment;
    the OpenAI format (`/v1/{rest}`) goes to `{root}/v1beta/openai/{rest}`."""
    if api == "openai":
        return root(base) + "/v1beta/openai" + under(path, "/v1")
    if path.startswith(("/v1beta/", "/v1/")):
        return root(base) + path
    raise ValueError(f"path {path!r} is not under /v1beta/ or /v1/")


def probe_target(base: str, model: str, settings: ModelSettings) -> tuple[str, bytes]:
    """The generation probe: `POST {root}/v1beta/models/{model}{endpoint_suffix}`."""
    model = model.removeprefix("models/")
    url = f"{root(base)}/v1beta/models/{model}{settings.endpoint_suffix}"
    return url, orjson.dumps(settings.test_payload or _DEFAULT_PROBE)


def models_url(base: str) -> str:
    """The models list, the cheap auth probe that spends no tokens."""
    return root(base) + "/v1beta/models"


def status_name(status: int) -> str:
    """Gemini's `error.status` for an HTTP status (`429` → `RESOURCE_EXHAUSTED`)."""
    name = _STATUS_NAMES.get(status)
    if name is not None:
        return name
    return "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"


def error_body(
    status: int, message: str, *, code: str | None = None, type_: str | None = None
) -> bytes:
    """An error in Gemini's shape: `{"error": {"code", "message", "status"}}`.

    `type_` overrides `status`; `code` becomes a `google.rpc.ErrorInfo` reason in `details`.
    """
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": type_ or status_name(status),
    }
    if code is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": code,
                "domain": "googleapis.com",
            }
        ]
    return orjson.dumps({"error": error})


_METHODS = {
    ":generateContent": ["generateContent", "streamGenerateContent", "countTokens"],
    ":streamGenerateContent": ["generateContent", "streamGenerateContent", "countTokens"],
    ":embedContent": ["embedContent", "batchEmbedContents", "countTokens"],
    ":batchEmbedContents": ["embedContent", "batchEmbedContents", "countTokens"],
}


def models_list(models: list[tuple[str, str]]) -> bytes:
    """The native models list (`GET /v1beta/models`) of `(name, endpoint_suffix)` pairs, each
    with the methods its configured endpoint implies, in one page."""
    listed = [
        {
            "name": f"models/{name}",
            "baseModelId": name,
            "displayName": name,
            "supportedGenerationMethods": _METHODS.get(suffix, [suffix.removeprefix(":")]),
        }
        for name, suffix in models
    ]
    return orjson.dumps({"models": listed})
