"""Anthropic: the Messages API (`/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`) and
its OpenAI-compatible endpoint (`/v1/chat/completions` with a Bearer key), probes, error
bodies and the models list in Anthropic's shape.

`api_base_url` carries its version segment (`https://api.anthropic.com/v1`), as an
`openai_like` provider's does: a client's `/v1/{rest}` goes to `{api_base_url}/{rest}` in
either format. The key travels as `x-api-key` natively, as a Bearer token on the OpenAI
endpoint; `anthropic-version` is the client's, or `DEFAULT_VERSION`.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmgateway.config.settings import ModelSettings
from llmgateway.providers.openai import under

DEFAULT_VERSION = "2023-06-01"
"""The `anthropic-version` sent when the client sends none (the probes always send it)."""
MODELS_PAGE = 1000
"""Models asked for in one page of the list (Anthropic's maximum)."""

_DEFAULT_PROBE: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's `error.type` by HTTP status (https://docs.anthropic.com/en/api/errors)."""


def upstream_url(base: str, api: str, path: str) -> str:
    """The upstream URL (without query) for a client path under `/v1/`, in either format."""
    return base.rstrip("/") + under(path, "/v1")


def probe_target(base: str, model: str, settings: ModelSettings) -> tuple[str, bytes]:
    """The generation probe: `POST {base}{endpoint_suffix}` with `test_payload` (default: one
    word in, `max_tokens` 1) plus `model`."""
    payload = dict(settings.test_payload or _DEFAULT_PROBE)
    payload["model"] = model
    return base.rstrip("/") + settings.endpoint_suffix, orjson.dumps(payload)


def models_url(base: str) -> str:
    """The models list, the cheap auth probe that spends no tokens (one page of the most)."""
    return f"{base.rstrip('/')}/models?limit={MODELS_PAGE}"


def error_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status (`529` → `overloaded_error`)."""
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str, *, code: str | None = None, type_: str | None = None
) -> bytes:
    """An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

    The gateway's own `code` has no place in it; `type_` overrides the status's type."""
    error = {"type": type_ or error_type(status), "message": message}
    return orjson.dumps({"type": "error", "error": error})


def sse_error_event(status: int, message: str) -> bytes:
    """An error mid-stream as Anthropic sends one: `event: error` with the error body."""
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"


def _model(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": "1970-01-01T00:00:00Z",
    }


def models_list(names: list[str]) -> bytes:
    """`GET /v1/models` in Anthropic's shape, in one page."""
    return orjson.dumps(
        {
            "data": [_model(name) for name in names],
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )


def model_object(name: str) -> bytes:
    """`GET /v1/models/{id}`: one model in Anthropic's shape."""
    return orjson.dumps(_model(name))
