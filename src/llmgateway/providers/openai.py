"""OpenAI-compatible providers (OpenAI, DeepSeek, OpenRouter, vLLM…): URLs, probes, error bodies.

`api_base_url` carries its version segment (`https://api.openai.com/v1`), so a client's
`/v1/{rest}` goes to `{api_base_url}/{rest}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmgateway.config.settings import ModelSettings

_DEFAULT_PROBE: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
}


def upstream_url(base: str, api: str, path: str) -> str:
    """The upstream URL (without query) for a client path under `/v1/`."""
    if api != "openai":
        raise ValueError(
            f"an openai_like provider speaks only the OpenAI format, not {api!r}: "
            "call it under /v1/ with an Authorization: Bearer token"
        )
    return base.rstrip("/") + under(path, "/v1")


def under(path: str, prefix: str) -> str:
    """`path` without `prefix` (`/v1/chat/completions` → `/chat/completions`), or ValueError."""
    if not path.startswith(prefix + "/"):
        raise ValueError(f"path {path!r} is not under {prefix}/")
    return path[len(prefix) :]


def probe_target(base: str, model: str, settings: ModelSettings) -> tuple[str, bytes]:
    """The generation probe: `POST {base}{endpoint_suffix}` with `test_payload` plus `model`."""
    payload = dict(settings.test_payload or _DEFAULT_PROBE)
    payload["model"] = model
    return base.rstrip("/") + settings.endpoint_suffix, orjson.dumps(payload)


def models_url(base: str) -> str:
    """The models list, the cheap auth probe that spends no tokens."""
    return base.rstrip("/") + "/models"


def error_body(
    status: int, message: str, *, code: str | None = None, type_: str | None = None
) -> bytes:
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""
    error = {"message": message, "type": type_ or _type_of(status), "param": None, "code": code}
    return orjson.dumps({"error": error})


def _type_of(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def models_list(names: list[str], owner: str) -> bytes:
    """`GET /v1/models` in OpenAI's list shape."""
    return orjson.dumps({"object": "list", "data": [_model(name, owner) for name in names]})


def model_object(name: str, owner: str) -> bytes:
    """`GET /v1/models/{id}`: one model in OpenAI's shape."""
    return orjson.dumps(_model(name, owner))


def _model(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}
