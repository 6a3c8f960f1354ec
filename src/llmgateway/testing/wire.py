"""The fake upstream's response bodies, in the real OpenAI and Gemini shapes.

Each body is built once per distinct argument tuple and cached, so serving costs no JSON
encoding: the fake stays fast enough to benchmark the gateway against.
"""

from __future__ import annotations

import base64
import functools
import struct
from typing import Any

import orjson

CREATED = 1_700_000_000
WORDS = ("Hello", " from", " the", " fake", " upstream", ".")
PROMPT_TOKENS = 5
CACHED_TOKENS = 3
"""Of the `PROMPT_TOKENS`, those read from the prompt cache when a request names a
`prompt_cache_key` (OpenAI chat and the Responses API)."""
REASONING_TOKENS = 7
"""Output tokens spent reasoning, besides one a word, when a request names a reasoning effort
(chat's `reasoning_effort`, the Responses API's `reasoning.effort`)."""
EMBEDDING = (0.125, -0.25, 0.5, 0.0625, -0.5, 0.25, 0.75, -0.125)


def _word(index: int) -> str:
    return WORDS[index % len(WORDS)]


def text(chunks: int) -> str:
    """The whole answer a stream of `chunks` events carries (the non-streaming answer too)."""
    return "".join(_word(i) for i in range(chunks))


def _usage(chunks: int, cached: int, reasoning: int) -> dict[str, Any]:
    output = chunks + reasoning
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": output,
        "total_tokens": PROMPT_TOKENS + output,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


@functools.lru_cache(maxsize=512)
def openai_completion(model: str, chunks: int, cached: int = 0, reasoning: int = 0) -> bytes:
    """A `chat.completion` object (`cached` of its prompt tokens read from the cache,
    `reasoning` output tokens besides its words)."""
    message = {"role": "assistant", "content": text(chunks), "refusal": None}
    return orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": _usage(chunks, cached, reasoning),
            "system_fingerprint": "fp_fake",
        }
    )


@functools.lru_cache(maxsize=512)
def openai_chunks(
    model: str, chunks: int, include_usage: bool, cached: int = 0, reasoning: int = 0
) -> tuple[bytes, ...]:
    """The SSE events of a streamed chat completion, `data: [DONE]` last (the usage chunk's
    counts as `openai_completion()`'s)."""
    events: list[dict[str, Any]] = []
    for index in range(chunks):
        delta = {"content": _word(index)} | ({"role": "assistant"} if index == 0 else {})
        last = index == chunks - 1
        reason = "stop" if last else None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        events.append(_chunk(model, [choice]))
    if include_usage:
        for event in events:
            event["usage"] = None
        events.append(_chunk(model, []) | {"usage": _usage(chunks, cached, reasoning)})
    framed = tuple(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)
    return (*framed, b"data: [DONE]\n\n")


def _chunk(model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
    }


@functools.lru_cache(maxsize=512)
def openai_embeddings(model: str, count: int, as_base64: bool) -> bytes:
    """An embeddings list; `as_base64` is what the openai SDK asks for by default."""
    vector: Any = list(EMBEDDING)
    if as_base64:
        vector = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)]
    usage = {"prompt_tokens": PROMPT_TOKENS * count, "total_tokens": PROMPT_TOKENS * count}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


@functools.lru_cache(maxsize=16)
def openai_models(models: tuple[str, ...]) -> bytes:
    """The models list (`GET /v1/models`)."""
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in models]
    return orjson.dumps({"object": "list", "data": data})


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """An error in OpenAI's shape."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})


def _gemini_usage(chunks: int) -> dict[str, int]:
    return {
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": chunks,
        "totalTokenCount": PROMPT_TOKENS + chunks,
    }


def _gemini(model: str, words: str, usage: int, finished: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": words}], "role": "model"}}
    candidate |= {"finishReason": "STOP"} if finished else {}
    return {
        "candidates": [candidate | {"index": 0}],
        "usageMetadata": _gemini_usage(usage),
        "modelVersion": model,
        "responseId": "fake-response",
    }


@functools.lru_cache(maxsize=512)
def gemini_response(model: str, chunks: int) -> bytes:
    """A `GenerateContentResponse`."""
    return orjson.dumps(_gemini(model, text(chunks), chunks, finished=True))


@functools.lru_cache(maxsize=512)
def gemini_chunks(model: str, chunks: int, sse: bool) -> tuple[bytes, ...]:
    """A streamed answer: SSE events (`alt=sse`, no `[DONE]`), else pieces of one JSON array."""
    parts = [
        orjson.dumps(_gemini(model, _word(i), i + 1, finished=i == chunks - 1))
        for i in range(chunks)
    ]
    if sse:
        return tuple(b"data: " + part + b"\r\n\r\n" for part in parts)
    pieces = [(b"[" if i == 0 else b",\r\n") + part for i, part in enumerate(parts)]
    return (*pieces, b"]")


@functools.lru_cache(maxsize=512)
def gemini_embedding(count: int) -> bytes:
    """`embedContent` (one) or `batchEmbedContents` (`count` > 1) answer."""
    values = {"values": list(EMBEDDING)}
    if count == 1:
        return orjson.dumps({"embedding": values})
    return orjson.dumps({"embeddings": [values] * count})


@functools.lru_cache(maxsize=16)
def gemini_models(models: tuple[str, ...], next_page: str | None = None) -> bytes:
    """One page of the models list (`GET /v1beta/models`), with the next page's token."""
    page: dict[str, Any] = {"models": [gemini_model(m) for m in models]}
    if next_page is not None:
        page["nextPageToken"] = next_page
    return orjson.dumps(page)


def gemini_model(model: str) -> dict[str, Any]:
    """One model's description."""
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model,
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }


def gemini_error(status: int, message: str, state: str, details: list[Any]) -> bytes:
    """An error in Gemini's shape (`details` as Google sends them)."""
    error = {"code": status, "message": message, "status": state}
    return orjson.dumps({"error": error | ({"details": details} if details else {})})
