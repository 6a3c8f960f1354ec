"""Faults of the fake upstream: which key gets which (`Behavior`, the naming convention), and
the error answers in each dialect's real shape (OpenAI, Gemini, Gemini's OpenAI-compatible
endpoint, Anthropic's from `testing.anthropic_wire`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import pydantic
from aiohttp import web

from llmgateway.observe.masking import mask
from llmgateway.testing import anthropic_wire as claude
from llmgateway.testing import wire

_JSON = "application/json"

RetryStyle = Literal["retry-after", "retry-after-ms", "x-ratelimit", "retry-delay", "none"]
Dialect = Literal["openai", "gemini", "compat", "anthropic"]
"""How a route speaks: OpenAI, Gemini native, Gemini's OpenAI-compatible endpoint (Bearer
auth, Gemini-shaped errors wrapped in a JSON array, as Google sends them), or Anthropic's
Messages API (`x-api-key`)."""


@dataclass(frozen=True, slots=True)
class Behavior:
    """What the fake does for one key. Faults are checked in field order; the first wins.

    Rate limits last for the key's first `rate_limit_calls` calls and/or until
    `rate_limit_until` on the fake's clock (forever when both are None). `no_model` and
    `context_length` answer only calls that name a model. The stream faults shape streamed
    answers only (a whole answer is served as usual): `stream_error` answers 200 and then an
    error event (in the dialect's error shape for that status) after `stream_error_after` data
    events, and ends there; `empty_stream` sends only keep-alive comments and ends;
    `first_event_delay` sends the 200's headers at once and waits that long before the first
    event.
    """

    hang: bool = False  # never answer (until the client gives up or the fake stops)
    invalid: bool = False  # 401 invalid_api_key / Gemini 400 API_KEY_INVALID
    no_quota: bool = False  # 429 insufficient_quota / Gemini per-day quota / Anthropic credit
    rate_limited: bool = False  # 429 with a retry hint in `retry_style`
    retry_after: float = 1.0
    retry_style: RetryStyle = "retry-after"
    rate_limit_calls: int | None = None
    rate_limit_until: float | None = None
    error_rate: float = 0.0  # share of calls answered with `error_status` (seeded random)
    error_status: int = 500
    no_model: bool = False  # 404: the model does not exist (model_not_found / NOT_FOUND)
    context_length: bool = False  # 400: the request exceeds the model's context window
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float | None = None  # seconds between streamed events (None: the fake's)
    drop_after_chunks: int | None = None  # close the connection after N events (or mid-body)
    stream_error: int | None = None  # 200, then an error event with this status
    stream_error_after: int = 0  # data events before `stream_error`'s event
    empty_stream: bool = False  # 200, keep-alive comments only, then the end
    first_event_delay: float = 0.0  # seconds between the 200's headers and the first event


NAMED = {
    "invalid": Behavior(invalid=True),
    "ratelimited": Behavior(rate_limited=True, retry_after=5.0),
    "noquota": Behavior(no_quota=True),
    "flaky": Behavior(error_rate=0.5),
    "slow": Behavior(delay=2.0, chunk_delay=0.2),
    "hang": Behavior(hang=True),
    "drop": Behavior(drop_after_chunks=1),
    "nomodel": Behavior(no_model=True),
    "contextlength": Behavior(context_length=True),
    "streamerror": Behavior(stream_error=500),
    "emptystream": Behavior(empty_stream=True),
    "stall": Behavior(first_event_delay=30.0),
}
_GOOD = Behavior()
BEHAVIOR_FIELDS = frozenset(f.name for f in fields(Behavior))
BEHAVIOR_ADAPTER = pydantic.TypeAdapter(Behavior)


def behavior_for_name(secret: str) -> Behavior:
    """The behaviour the naming convention gives a key (`sk-ratelimited-1` → rate limited)."""
    lowered = secret.lower()
    for word, behavior in NAMED.items():
        if word in lowered:
            return behavior
    return _GOOD


def error_response(
    speaks: Dialect,
    status: int,
    message: str,
    state: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    details: list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    body = error_body(speaks, status, message, state, type_, code, details, param)
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def error_body(
    speaks: Dialect,
    status: int,
    message: str,
    state: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    details: list[Any] | None = None,
    param: str | None = None,
) -> bytes:
    """An error body in the dialect's shape (Gemini's in a JSON array on the compat endpoint)."""
    if speaks == "openai":
        return wire.openai_error(message, type_, code, param)
    if speaks == "anthropic":
        return claude.error_body(status, message)
    body = wire.gemini_error(status, message, state, details or [])
    return b"[" + body + b"]" if speaks == "compat" else body


def bad_request(request: web.Request, message: str) -> web.Response:
    speaks: Dialect = "compat" if request.path.startswith("/v1beta/") else "openai"
    return error_response(speaks, 400, message, "INVALID_ARGUMENT")


def missing_key(speaks: Dialect) -> web.Response:
    if speaks == "anthropic":
        return claude.missing_key()
    if speaks == "openai":
        message = "You didn't provide an API key (Authorization: Bearer YOUR_KEY)."
        return error_response(speaks, 401, message, "UNAUTHENTICATED", code="missing_api_key")
    message = "Method doesn't allow unregistered callers. Please use an API Key."
    return error_response(speaks, 403, message, "PERMISSION_DENIED")


def invalid_key(speaks: Dialect, secret: str) -> web.Response:
    if speaks == "anthropic":
        return claude.invalid_key()
    if speaks == "openai":
        message = f"Incorrect API key provided: {mask(secret)}."
        return error_response(speaks, 401, message, "UNAUTHENTICATED", code="invalid_api_key")
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
    ]
    message = "API key not valid. Please pass a valid API key."
    return error_response(speaks, 400, message, "INVALID_ARGUMENT", details=details)


def _quota_failure(quota_id: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generate_content_requests", "quotaId": quota_id}],
    }


def no_quota(speaks: Dialect) -> web.Response:
    if speaks == "anthropic":
        return claude.no_credit()
    message = "You exceeded your current quota, please check your plan and billing details."
    details = [_quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier")]
    return error_response(
        speaks,
        429,
        message,
        "RESOURCE_EXHAUSTED",
        type_="insufficient_quota",
        code="insufficient_quota",
        details=details,
    )


def rate_limited(speaks: Dialect, seconds: float, style: RetryStyle) -> web.Response:
    if speaks == "anthropic":
        return claude.rate_limited(seconds)
    headers: dict[str, str] = {}
    details = [_quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")]
    if style == "retry-after":
        headers["retry-after"] = f"{seconds:g}"
    elif style == "retry-after-ms":
        headers["retry-after-ms"] = f"{seconds * 1000:g}"
    elif style == "x-ratelimit":
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = f"{seconds:g}s"
    elif style == "retry-delay":
        retry_info = "type.googleapis.com/google.rpc.RetryInfo"
        details.append({"@type": retry_info, "retryDelay": f"{seconds:g}s"})
    message = f"Rate limit reached. Please try again in {seconds:g}s."
    return error_response(
        speaks,
        429,
        message,
        "RESOURCE_EXHAUSTED",
        type_="requests",
        code="rate_limit_exceeded",
        details=details,
        headers=headers,
    )


def server_error(speaks: Dialect, status: int) -> web.Response:
    if speaks == "anthropic":
        return claude.server_error(status)
    state = {503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(status, "INTERNAL")
    if status < 500:
        state = "RESOURCE_EXHAUSTED" if status == 429 else "FAILED_PRECONDITION"
    message = "The model is overloaded." if status == 503 else "The server had an error."
    return error_response(speaks, status, message, state, type_="server_error")


def model_not_found(speaks: Dialect, model: str, path: str) -> web.Response:
    """The model does not exist: OpenAI's 404 `model_not_found`, Gemini's 404 NOT_FOUND
    (worded with the API version and method the path names; `v1main` on the compat endpoint,
    as Google words it there), Anthropic's 404 "model: x"."""
    if speaks == "anthropic":
        return claude.model_not_found(model)
    if speaks == "openai":
        message = f"The model `{model}` does not exist or you do not have access to it."
        return error_response(speaks, 404, message, "NOT_FOUND", code="model_not_found")
    version = "v1main" if speaks == "compat" else path.split("/")[1]
    method = path.rpartition(":")[2] if speaks == "gemini" else "generateContent"
    message = (
        f"models/{model} is not found for API version {version}, or is not supported for"
        f" {method}. Call ListModels to see the list of available models and their supported"
        " methods."
    )
    return error_response(speaks, 404, message, "NOT_FOUND")


def context_length(speaks: Dialect, tokens: int, limit: int) -> web.Response:
    """The request exceeds the model's context window: OpenAI's 400
    `context_length_exceeded`, Gemini's 400 INVALID_ARGUMENT "The input token count…",
    Anthropic's 400 "prompt is too long…"."""
    if speaks == "anthropic":
        return claude.context_length(tokens, limit)
    if speaks == "openai":
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages"
            f" resulted in {tokens} tokens. Please reduce the length of the messages."
        )
        return error_response(
            speaks, 400, message, "", code="context_length_exceeded", param="messages"
        )
    message = (
        f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit})."
    )
    return error_response(speaks, 400, message, "INVALID_ARGUMENT")


KEEP_ALIVE = b": keep-alive\n\n"


def stream_error_event(speaks: Dialect, status: int) -> bytes:
    """`stream_error_body()` as an SSE `data:` event (Gemini's framed with CRLF, as it frames
    its events; Anthropic's an `event: error`)."""
    if speaks == "anthropic":
        return claude.stream_error_event(status)
    body = stream_error_body(speaks, status)
    return b"data: " + body + (b"\r\n\r\n" if speaks == "gemini" else b"\n\n")


def stream_error_body(speaks: Dialect, status: int) -> bytes:
    """The error a stream sends for `status`: the dialect's error answer for it (as
    `rate_limited`, `server_error`, or a 400 INVALID_ARGUMENT)."""
    if status == 429:
        answer = rate_limited(speaks, 1.0, "retry-delay")
    elif status >= 500:
        answer = server_error(speaks, status)
    else:
        answer = error_response(speaks, status, "Invalid request.", "INVALID_ARGUMENT")
    return answer.body if isinstance(answer.body, bytes) else b"{}"


def model_fault(
    speaks: Dialect,
    request: web.Request,
    model: str,
    body: bytes,
    behavior: Behavior,
    limit: int | None,
) -> web.Response | None:
    """The answer to a call naming `model` when the model is missing (`behavior.no_model`) or
    the request too long for it (`behavior.context_length`, or a body over `limit` bytes, at
    4 bytes a token); None when it may be served."""
    if behavior.no_model:
        return model_not_found(speaks, model, request.path)
    if behavior.context_length or (limit is not None and len(body) > limit):
        allowed = 8192 if limit is None else limit // 4
        return context_length(speaks, max(len(body) // 4, allowed + 1), allowed)
    return None
