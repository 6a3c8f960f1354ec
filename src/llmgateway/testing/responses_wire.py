"""The fake upstream's OpenAI Responses API shapes (`POST /v1/responses`): a whole `response`
object, and a streamed one as OpenAI streams it (named SSE events numbered by
`sequence_number`, no `[DONE]`; the usage only in `response.completed`), as the official SDK
parses them (`openai.types.responses`). Built once per distinct argument tuple, as
`testing.wire`'s bodies."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson

from llmgateway.testing.wire import CREATED, PROMPT_TOKENS, WORDS, text

RESPONSE_ID = "resp_fake01"
MESSAGE_ID = "msg_fake01"


def usage(chunks: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """The usage of an answer of `chunks` words (`cached` input tokens read from the cache,
    `reasoning` output tokens besides the words)."""
    output = chunks + reasoning
    return {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": PROMPT_TOKENS + output,
    }


def _part(words: str) -> dict[str, Any]:
    return {"type": "output_text", "text": words, "annotations": [], "logprobs": []}


def _message(words: str | None) -> dict[str, Any]:
    """The output message: its text (None: just begun, no content yet)."""
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "status": "in_progress" if words is None else "completed",
        "role": "assistant",
        "content": [] if words is None else [_part(words)],
    }


def _response(model: str, chunks: int, cached: int, reasoning: int, done: bool) -> Any:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": "completed" if done else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [_message(text(chunks))] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "low" if reasoning else None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage(chunks, cached, reasoning) if done else None,
        "user": None,
        "metadata": {},
    }


@functools.lru_cache(maxsize=512)
def response(model: str, chunks: int, cached: int = 0, reasoning: int = 0) -> bytes:
    """A whole `response` object: one output message of `chunks` words, and its usage."""
    return orjson.dumps(_response(model, chunks, cached, reasoning, done=True))


def _event(number: int, name: str, fields: Mapping[str, Any]) -> bytes:
    data = {"type": name, "sequence_number": number, **fields}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@functools.lru_cache(maxsize=512)
def events(model: str, chunks: int, cached: int = 0, reasoning: int = 0) -> tuple[bytes, ...]:
    """The SSE events of a streamed response, in OpenAI's order: `response.created`,
    `response.in_progress`, `response.output_item.added`, `response.content_part.added`, one
    `response.output_text.delta` a word, `response.output_text.done`,
    `response.content_part.done`, `response.output_item.done`, `response.completed` (the whole
    response, with its usage)."""
    begun = _response(model, chunks, cached, reasoning, done=False)
    words = text(chunks)
    where = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    named: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": begun}),
        ("response.in_progress", {"response": begun}),
        ("response.output_item.added", {"output_index": 0, "item": _message(None)}),
        ("response.content_part.added", where | {"part": _part("")}),
    ]
    named += [
        ("response.output_text.delta", where | {"delta": WORDS[i % len(WORDS)], "logprobs": []})
        for i in range(chunks)
    ]
    named += [
        ("response.output_text.done", where | {"text": words, "logprobs": []}),
        ("response.content_part.done", where | {"part": _part(words)}),
        ("response.output_item.done", {"output_index": 0, "item": _message(words)}),
        ("response.completed", {"response": _response(model, chunks, cached, reasoning, True)}),
    ]
    return tuple(_event(number, name, fields) for number, (name, fields) in enumerate(named))


def stream_error(model: str, status: int, number: int) -> bytes:
    """How a Responses stream fails with `status` after `number` events: a server error as
    `response.failed` (the response, failed, with its error), anything else as an `error`
    event (`code`, `message`, `param` at the top)."""
    if status >= 500:
        failed = _response(model, 0, 0, 0, done=False) | {"status": "failed"}
        failed["error"] = {"code": "server_error", "message": "The server had an error."}
        return _event(number, "response.failed", {"response": failed})
    code = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
    message = "Rate limit reached. Please try again later." if status == 429 else "Invalid request."
    return _event(number, "error", {"code": code, "message": message, "param": None})
