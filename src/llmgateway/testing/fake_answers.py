"""The fake upstream's answers to calls it lets through: OpenAI chat, the Responses API and
embeddings, both models lists, and Gemini's native methods, in the providers' shapes (built by
`testing.wire` and `testing.responses_wire`); and sending one, whole, streamed or cut off as the
key's behaviour says."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from llmgateway.testing import responses_wire, wire
from llmgateway.testing.faults import (
    KEEP_ALIVE,
    Behavior,
    Dialect,
    bad_request,
    error_response,
    stream_error_body,
    stream_error_event,
)

GEMINI_PAGE_SIZE = 50
"""Models per page of Gemini's list when the caller asks for no `pageSize` (as Gemini)."""
GEMINI_MAX_PAGE_SIZE = 1000
JSON = "application/json"


@dataclass(slots=True)
class Answer:
    """A success answer: a whole body, or events to stream one by one."""

    body: bytes = b""
    events: tuple[bytes, ...] = ()
    content_type: str = JSON
    streamed: bool = False
    # how this stream fails with a status after so many events (None: as its dialect's do)
    stream_error: Callable[[int, int], bytes] | None = None


def json_object(body: bytes) -> dict[str, Any] | None:
    """`body` parsed as a JSON object, or None when it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def chat(request: web.Request, body: bytes, chunks: int) -> Answer | web.Response:
    """`POST …/chat/completions`: a completion, or `chunks` events when streamed."""
    asked = _generation(request, body)
    if isinstance(asked, web.Response):
        return asked
    document, model = asked
    cached, reasoning = _spent(document, document.get("reasoning_effort"))
    if document.get("stream") is not True:
        return Answer(body=wire.openai_completion(model, chunks, cached, reasoning))
    options = document.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    events = wire.openai_chunks(model, chunks, usage, cached, reasoning)
    return Answer(events=events, content_type="text/event-stream", streamed=True)


def responses(request: web.Request, body: bytes, chunks: int) -> Answer | web.Response:
    """`POST /v1/responses`: a response, or its events when the body says `"stream": true`."""
    asked = _generation(request, body)
    if isinstance(asked, web.Response):
        return asked
    document, model = asked
    options = document.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:  # chat's, not this API's
        message = "Unknown parameter: 'stream_options.include_usage'."
        param = "stream_options.include_usage"
        return error_response("openai", 400, message, "", code="unknown_parameter", param=param)
    reasoning = document.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    cached, thought = _spent(document, effort)
    if document.get("stream") is not True:
        return Answer(body=responses_wire.response(model, chunks, cached, thought))
    events = responses_wire.events(model, chunks, cached, thought)
    failing = functools.partial(responses_wire.stream_error, model)
    return Answer(
        events=events, content_type="text/event-stream", streamed=True, stream_error=failing
    )


def _generation(request: web.Request, body: bytes) -> tuple[dict[str, Any], str] | web.Response:
    """A generation request's body and model, or the 400 OpenAI answers when it has none."""
    document = json_object(body)
    if document is None:
        return bad_request(request, "the body is not a JSON object")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        return bad_request(request, "you must provide a model parameter")
    return document, model


def _spent(document: dict[str, Any], effort: object) -> tuple[int, int]:
    """The (cached, reasoning) tokens a request gets: some cached when it names a
    `prompt_cache_key`, some reasoning when it names a reasoning `effort` (other than "none")."""
    cached = wire.CACHED_TOKENS if isinstance(document.get("prompt_cache_key"), str) else 0
    thinks = isinstance(effort, str) and effort != "none"
    return cached, wire.REASONING_TOKENS if thinks else 0


def embeddings(request: web.Request, body: bytes) -> Answer | web.Response:
    """`POST …/embeddings`: one vector per input."""
    document = json_object(body)
    if document is None or not isinstance(document.get("model"), str):
        return bad_request(request, "you must provide a model parameter")
    given = document.get("input")
    count = len(given) if isinstance(given, list) and given else 1
    as_base64 = document.get("encoding_format") == "base64"
    return Answer(body=wire.openai_embeddings(document["model"], count, as_base64))


def openai_models(models: tuple[str, ...]) -> Answer:
    """OpenAI's models list."""
    return Answer(body=wire.openai_models(models))


def gemini_models(request: web.Request, models: tuple[str, ...]) -> Answer | web.Response:
    """Gemini's models list, one page of `?pageSize=` from `?pageToken=`."""
    size = request.query.get("pageSize", str(GEMINI_PAGE_SIZE))
    start = request.query.get("pageToken", "0")
    if not size.isdigit() or not start.isdigit():
        return error_response("gemini", 400, "Invalid page size or token.", "INVALID_ARGUMENT")
    first, count = int(start), min(max(int(size), 1), GEMINI_MAX_PAGE_SIZE)
    page = models[first : first + count]
    more = first + count < len(models)
    return Answer(body=wire.gemini_models(page, str(first + count) if more else None))


def gemini_model(request: web.Request) -> Answer:
    """Gemini's description of one model."""
    return Answer(body=orjson.dumps(wire.gemini_model(request.match_info["target"])))


def gemini_call(request: web.Request, body: bytes, chunks: int) -> Answer | web.Response:
    """`POST …/models/{model}:{method}`: generate (whole or streamed), count tokens, embed."""
    model, _, method = request.match_info["target"].partition(":")
    if json_object(body) is None:
        return error_response("gemini", 400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
    if method == "generateContent":
        return Answer(body=wire.gemini_response(model, chunks))
    if method == "streamGenerateContent":
        sse = request.query.get("alt") == "sse"
        events = wire.gemini_chunks(model, chunks, sse)
        content_type = "text/event-stream" if sse else JSON
        return Answer(events=events, content_type=content_type, streamed=True)
    if method == "countTokens":
        return Answer(body=b'{"totalTokens": %d}' % wire.PROMPT_TOKENS)
    if method in ("embedContent", "batchEmbedContents"):
        requests = json_object(body) or {}
        batch = requests.get("requests")
        count = len(batch) if isinstance(batch, list) and batch else 1
        return Answer(body=wire.gemini_embedding(count))
    message = f"Method {method!r} is not found for model {model!r}."
    return error_response("gemini", 404, message, "NOT_FOUND")


def model_of(request: web.Request, speaks: Dialect, body: bytes) -> str:
    """The model a call names (the body's `model`, Gemini's path), or "" when it names none."""
    if request.method != "POST":
        return ""
    if speaks == "gemini":
        return request.match_info.get("target", "").partition(":")[0]
    document = json_object(body)
    model = document.get("model") if document is not None else None
    return model if isinstance(model, str) else ""


def faulty(answer: Answer, behavior: Behavior, speaks: Dialect) -> Answer:
    """A streamed answer as the key's stream faults shape it (any other answer as it is)."""
    if not answer.streamed or not (behavior.empty_stream or behavior.stream_error is not None):
        return answer
    sse = answer.content_type == "text/event-stream"
    if behavior.empty_stream:
        events = (KEEP_ALIVE,) * len(answer.events) if sse else (b"[", b"]")
    elif sse:
        status = behavior.stream_error or 500
        data = tuple(e for e in answer.events if not e.startswith(b"data: [DONE]"))
        kept = data[: behavior.stream_error_after]
        fail = answer.stream_error
        error = stream_error_event(speaks, status) if fail is None else fail(status, len(kept))
        events = (*kept, error)
    else:  # Gemini's stream without alt=sse: pieces of one JSON array, the error one of them
        status = behavior.stream_error or 500
        kept = answer.events[: min(behavior.stream_error_after, len(answer.events) - 1)]
        error = (b",\r\n" if kept else b"[") + stream_error_body(speaks, status)
        events = (*kept, error, b"]")
    return Answer(events=events, content_type=answer.content_type, streamed=True)


async def send(
    request: web.Request, answer: Answer, behavior: Behavior, chunk_delay: float
) -> web.StreamResponse:
    """Send `answer` whole, or event by event `chunk_delay` apart (the behaviour's own delay if
    it has one) after `behavior.first_event_delay`, or cut off as `behavior.drop_after_chunks`
    says."""
    drop = behavior.drop_after_chunks
    if not answer.streamed and drop is None:
        return web.Response(body=answer.body, content_type=answer.content_type)
    response = web.StreamResponse(headers={"content-type": answer.content_type})
    if not answer.streamed:
        response.content_length = len(answer.body)
        await response.prepare(request)
        await response.write(answer.body[: len(answer.body) // 2])
        return _drop(request, response)
    response.enable_chunked_encoding()
    delay = chunk_delay if behavior.chunk_delay is None else behavior.chunk_delay
    try:
        await response.prepare(request)
        if behavior.first_event_delay > 0:
            await response.write(b"")  # the headers go now, the first event only then
            await asyncio.sleep(behavior.first_event_delay)
        for index, event in enumerate(answer.events):
            if drop is not None and index >= drop:
                return _drop(request, response)
            if delay > 0 and index > 0:
                await asyncio.sleep(delay)
            await response.write(event)
        await response.write_eof()
    except ConnectionResetError:  # the client left mid-stream (a load run ending): no error
        pass
    return response


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection mid-body, as a provider that dies does."""
    if request.transport is not None:
        request.transport.abort()
    return response
