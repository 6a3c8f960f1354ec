"""The fake upstream's Anthropic shapes: Messages API answers (whole, and the real SSE event
sequence with usage in `message_start` and `message_delta`), token counts, the models list, and
the documented errors (https://docs.anthropic.com/en/api/errors), as Anthropic words them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from llmgateway.providers.anthropic import ERROR_TYPES
from llmgateway.testing.wire import PROMPT_TOKENS, WORDS, text

VERSION = "2023-06-01"
MESSAGE_ID = "msg_fake01"
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


def _usage(output: int) -> dict[str, Any]:
    return {
        "input_tokens": PROMPT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }


def _message(model: str, content: list[dict[str, Any]], stop: str | None, out: int) -> Any:
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(out),
    }


@functools.lru_cache(maxsize=512)
def message(model: str, chunks: int) -> bytes:
    """A whole `message` answer."""
    content = [{"type": "text", "text": text(chunks)}]
    return orjson.dumps(_message(model, content, "end_turn", chunks))


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@functools.lru_cache(maxsize=512)
def message_events(model: str, chunks: int) -> tuple[bytes, ...]:
    """The SSE events of a streamed message, in Anthropic's order: `message_start`,
    `content_block_start`, a `ping`, one `content_block_delta` per word, `content_block_stop`,
    `message_delta` (stop reason, output tokens), `message_stop`."""
    start = {"type": "message_start", "message": _message(model, [], None, 1)}
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = tuple(
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]},
            },
        )
        for i in range(chunks)
    )
    ending = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": chunks},
    }
    return (
        _event("message_start", start),
        _event("content_block_start", block),
        _event("ping", {"type": "ping"}),
        *deltas,
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event("message_delta", ending),
        _event("message_stop", {"type": "message_stop"}),
    )


def token_count(body: bytes) -> bytes:
    """`POST /v1/messages/count_tokens`: a count that grows with the request."""
    return orjson.dumps({"input_tokens": max(1, len(body) // 4)})


def models_page(models: tuple[str, ...], limit: int, after: str | None) -> bytes:
    """One page of `GET /v1/models` (`?limit=`, `?after_id=`)."""
    start = models.index(after) + 1 if after in models else 0
    page = models[start : start + limit]
    return orjson.dumps(
        {
            "data": [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in page
            ],
            "has_more": start + limit < len(models),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )


# --- errors ----------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """The `error.type` Anthropic sends with `status`."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, type_: str | None = None) -> bytes:
    """`{"type": "error", "error": {"type", "message"}}`."""
    error = {"type": type_ or error_type(status), "message": message}
    return orjson.dumps({"type": "error", "error": error, "request_id": "req_fake01"})


def error(
    status: int, message: str, type_: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An error answer."""
    body = error_body(status, message, type_)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def missing_key() -> web.Response:
    return error(401, "x-api-key header is required")


def invalid_key() -> web.Response:
    return error(401, "invalid x-api-key")


def no_credit() -> web.Response:
    """Out of credit: Anthropic answers a 400 `invalid_request_error` saying so."""
    return error(400, NO_CREDIT)


def rate_limited(seconds: float) -> web.Response:
    message = (
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. Please reduce the prompt length or the maximum tokens requested, or try again "
        "later."
    )
    return error(429, message, headers={"retry-after": f"{max(seconds, 0):g}"})


def server_error(status: int) -> web.Response:
    message = {529: "Overloaded", 500: "Internal server error"}.get(status, "Server error")
    return error(status, message)


def model_not_found(model: str) -> web.Response:
    return error(404, f"model: {model}")


def context_length(tokens: int, limit: int) -> web.Response:
    return error(400, f"prompt is too long: {tokens} tokens > {limit} maximum")


def stream_error_event(status: int) -> bytes:
    """An error event mid-stream (Anthropic sends one after a 200, e.g. `overloaded_error`)."""
    message = "Overloaded" if status == 529 else "Internal server error"
    if status < 500:
        message = "rate limited" if status == 429 else "Invalid request."
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"
