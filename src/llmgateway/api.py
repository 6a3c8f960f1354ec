"""The HTTP edge: a raw ASGI handler for the proxied routes (`/v1/…`, `/v1beta/…`).

Per request it reads only what it must (the token, `model` and `stream`), forwards the raw body,
streams the answer back chunk by chunk, and turns every failure into an error in the client's
API shape. A client disconnect cancels the upstream call at once and frees the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from llmgateway import debug, logs, providers
from llmgateway.metrics import Timing
from llmgateway.outcomes import Blame, ErrorReason, Outcome
from llmgateway.proxy import CANCELLED, Call, Conductor, Forward, Provider, Reply
from llmgateway.settings import DebugMode

log = logging.getLogger("llmgateway.api")

SUCCESS = Outcome(reason=None, blame=Blame.NONE, status=200)
STREAM_CUT = Outcome(reason=ErrorReason.STREAM_DISCONNECT, blame=Blame.PROVIDER)

# Never forwarded upstream: hop-by-hop headers, the client's credentials, and what aiohttp sets.
_DROP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "authorization",
        "x-goog-api-key",
        "api-key",
        "cookie",
        "accept-encoding",
        "x-request-id",
    }
)
# Never passed back to the client.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "server",
        "date",
        "x-request-id",
        "content-length",  # set again from what is relayed
    }
)


def token_digest(token: str) -> bytes:
    """Tokens are looked up by digest, so the lookup's timing says nothing about the token."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Edge:
    """The proxied routes of one gateway process."""

    conductor: Conductor
    tokens: Mapping[bytes, tuple[str, Provider]]  # token digest → (token, provider)
    max_body_bytes: int

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        request_id = _request_id(headers.get("x-request-id"))
        started = time.perf_counter()
        logs.bind_request(request_id)
        path: str = scope["path"]
        query = scope["query_string"].decode("latin-1")
        token, via_google = _client_token(headers, query)
        shape: providers.Api = "gemini" if via_google or path.startswith("/v1beta/") else "openai"
        provider = self._provider(token)
        if provider is None:
            message = (
                "Missing or invalid gateway token. Send it as a Bearer token (OpenAI format) "
                "or as x-goog-api-key (Gemini format)."
            )
            await _send_error(send, shape, 401, message, "invalid_api_key", request_id)
            self.conductor.metrics.unauthorized(401)
            return
        api = _api_for(provider, path, via_google)
        if api is None:
            message = f"This token's provider does not serve {path}; check the base URL."
            await _send_error(send, shape, 404, message, "not_found", request_id)
            return
        if api == "openai" and path == "/v1/models" and scope["method"] == "GET":
            await _send(
                send, 200, {"content-type": "application/json"}, _models_list(provider), request_id
            )
            return
        body = await _read_body(receive, headers, self.max_body_bytes)
        if body is None:
            limit = self.max_body_bytes
            message = f"The request body is larger than the gateway's limit of {limit} bytes."
            await _send_error(send, api, 413, message, "request_too_large", request_id)
            return
        parsed = _model_and_stream(provider, api, path, body)
        if isinstance(parsed, str):
            await _send_error(send, api, 400, parsed, "invalid_request", request_id)
            return
        model, stream = parsed
        forward_headers = {k: v for k, v in headers.items() if k not in _DROP_REQUEST}
        forward_headers["x-request-id"] = request_id
        call = Call(
            provider=provider,
            api=api,
            method=scope["method"],
            path=path,
            query=query,
            headers=forward_headers,
            body=body,
            model=model,
            stream=stream,
            client_retry=headers.get("x-stainless-retry-count", "0") not in ("0", ""),
            timing=Timing(started),
        )
        await self._serve(call, receive, send, request_id)

    def _provider(self, token: str | None) -> Provider | None:
        if not token:
            return None
        found = self.tokens.get(token_digest(token))
        if found is None or not hmac.compare_digest(found[0].encode(), token.encode()):
            return None
        return found[1]

    async def _serve(self, call: Call, receive: Receive, send: Send, request_id: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watch = _DisconnectWatch(receive, task)
        later = loop.call_later(WATCH_AFTER_SEC, watch.start)
        deadline = loop.time() + call.provider.settings.timeouts.total
        forward: Forward | None = None
        outcome = CANCELLED
        code, attempts, ended = 499, 0, "client_gone"  # until an answer is known
        budget = call.provider.budget
        budget.request_started()
        logs.bind_provider(call.provider.name, call.model)
        bound = self.conductor.metrics.for_provider(call.provider.name)
        bound.started()
        try:
            result = await self.conductor.run(call, deadline)
            if isinstance(result, Reply):
                code, attempts, ended = result.status, result.attempts, result.reason
                await _send(send, result.status, result.headers, result.body, request_id)
                return
            forward = result
            code, attempts = forward.response.status, forward.attempts
            outcome = await _relay(call, forward, send, request_id, deadline - loop.time())
            ended = outcome.reason.value if outcome.reason else "ok"
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()
            log.info("client disconnected", extra={"request_id": request_id})
        finally:
            budget.request_finished()
            later.cancel()
            watch.stop()
            if forward is not None:
                forward.response.close()
                self.conductor.finish(call, forward, outcome)
            bound.finished(call.model, code, call.timing)
            logs.request_done(code, attempts, ended, call.timing.started)


WATCH_AFTER_SEC = 0.02
"""A request still running after this long gets a task watching for the client going away; a
quicker one never pays for it (two event-loop turns and a task). A disconnect is noticed at
most this late."""


@dataclass(slots=True)
class _DisconnectWatch:
    """Cancels the request's task when the client disconnects (`gone` tells the handler)."""

    receive: Receive
    task: asyncio.Task[Any]
    gone: bool = False
    watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.task.cancel()
                return


async def _relay(
    call: Call, forward: Forward, send: Send, request_id: str, remaining: float
) -> Outcome:
    """Send the upstream answer to the client: a stream event by event as it arrives, a plain
    answer already read whole (see `proxy.WHOLE_BODY_LIMIT`) in one piece. Reports how it
    ended."""
    response = forward.response
    policy = call.provider.settings.gateway_policy
    if forward.body is not None:
        if policy.debug_mode is DebugMode.FULL_BODY:
            debug.whole_body(forward.body, forward.lease.secret)
        await _send(send, response.status, response.headers, forward.body, request_id)
        return SUCCESS
    sse = "text/event-stream" in response.headers.get("content-type", "")
    chunks: AsyncIterator[bytes] = response.chunks()
    if policy.debug_mode is DebugMode.FULL_BODY:
        chunks = debug.tee(chunks, forward.lease.secret)
    timing = call.timing
    started = False
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            length = response.content_length
            await send(_start(response.status, response.headers, request_id, length))
            started = True
            while True:
                asked = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    timing.waited(asked)
                    break
                now = time.perf_counter()
                timing.upstream += now - asked
                if timing.first_byte is None:
                    timing.first_byte = now
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except OSError as error:  # timeouts included; both transports raise OSErrors only
        timed_out = isinstance(error, TimeoutError)
        log.warning("upstream failed mid-response: %s", type(error).__name__)
        status = 504 if timed_out else 502
        message = "The upstream timed out mid-answer." if timed_out else "The upstream broke off."
        if not started:  # nothing reached the client yet: a clean error response
            body = providers.error_body(call.api, status, message, code="upstream_broke_off")
            await _send(send, status, {"content-type": "application/json"}, body, request_id)
        elif sse:  # the stream has begun: the error goes in-band
            event = providers.sse_error_event(call.api, status, message)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else: a large plain body cut mid-way; returning without ending it makes the server
        # close the connection, so the client sees a truncated answer rather than a short one
        return (
            Outcome(reason=ErrorReason.TIMEOUT, blame=Blame.PROVIDER) if timed_out else STREAM_CUT
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return SUCCESS


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


_ID_PREFIX = secrets.token_hex(6)  # per process, so ids stay unique across gateway processes
_ids = itertools.count(1)


def _request_id(given: str | None) -> str:
    if given and len(given) <= 128 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ids):012x}"


def _client_token(headers: Mapping[str, str], query: str) -> tuple[str | None, bool]:
    """The gateway token and whether it came the Gemini way (x-goog-api-key or ?key=)."""
    google = headers.get("x-goog-api-key")
    if google:
        return google, True
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), False
    if "key=" in query:
        for part in query.split("&"):
            if part.startswith("key="):
                return part[4:], True
    return headers.get("api-key"), False


def _api_for(provider: Provider, path: str, via_google: bool) -> providers.Api | None:
    if provider.settings.provider_type == "gemini":
        if path.startswith("/v1beta/") or (path.startswith("/v1/") and via_google):
            return "gemini"
        return "openai" if path.startswith("/v1/") else None
    return "openai" if path.startswith("/v1/") else None


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes | None:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _model_and_stream(
    provider: Provider, api: providers.Api, path: str, body: bytes
) -> tuple[str, bool] | str:
    """The model and stream flag, or a message saying what is wrong with the request."""
    default = provider.settings.default_model
    if api == "gemini":
        model, stream = providers.gemini.model_from_path(path)
        return (model or default), stream
    if not body or body.lstrip()[:1] != b"{":
        return default, False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return f"The request body is not valid JSON ({error}). Send a JSON object."
    model = data.get("model") if isinstance(data, dict) else None
    stream = bool(data.get("stream")) if isinstance(data, dict) else False
    return (model if isinstance(model, str) and model else default), stream


def _models_list(provider: Provider) -> bytes:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": provider.name}
        for name in provider.settings.models
    ]
    return orjson.dumps({"object": "list", "data": data})


def _start(status: int, headers: Mapping[str, str], request_id: str, length: int | None) -> Message:
    """The response start: `headers` (lower-case names) without hop-by-hop ones and the
    upstream's length, then ours (`length`, None when streaming) and the request id."""
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in headers.items()
        if k not in _DROP_RESPONSE
    ]
    if length is not None:
        raw.append((b"content-length", b"%d" % length))
    raw.append((b"x-request-id", request_id.encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


async def _send(
    send: Send, status: int, headers: Mapping[str, str], body: bytes, request_id: str
) -> None:
    await send(_start(status, headers, request_id, len(body)))
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send, api: providers.Api, status: int, message: str, code: str, request_id: str
) -> None:
    body = providers.error_body(api, status, message, code=code)
    await _send(send, status, {"content-type": "application/json"}, body, request_id)
