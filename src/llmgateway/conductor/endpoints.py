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

from starlette.types import Message, Receive, Scope, Send

from llmgateway import providers
from llmgateway.conductor.admission import (
    BodyBudget,
    BodyLimits,
    ClientGone,
    Refused,
    named_model,
    read_body,
    resolve,
)
from llmgateway.conductor.attempts import CANCELLED, Call, Conductor, Forward, Provider, Reply
from llmgateway.conductor.edge import BODY_ARRIVED, ON_DISCONNECT
from llmgateway.config.settings import DebugMode
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.observe import debug, logs
from llmgateway.observe.provider_metrics import OTHER_MODEL, Timing
from llmgateway.providers import gemini, openai, target
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.routes import Match, Surface

log = logging.getLogger("llmgateway.api")

SUCCESS = Outcome(reason=None, blame=Blame.NONE, status=200)
STREAM_CUT = Outcome(reason=ErrorReason.STREAM_DISCONNECT, blame=Blame.PROVIDER)
_INTERNAL = Refused(
    500,
    "internal_error",
    "The gateway failed to serve this request (an internal error, logged with its id).",
)


def token_digest(token: str) -> bytes:
    """Tokens are looked up by digest, so the lookup's timing says nothing about the token."""
    return hashlib.sha256(token.encode()).digest()


_NO_TOKEN = (
    "Missing or invalid gateway token. Send it as a Bearer token (OpenAI format) "
    "or as x-goog-api-key (Gemini format)."
)


@dataclass(frozen=True, slots=True)
class Edge:
    """The proxied routes of one gateway process.

    Before a key is taken, every request passes the same checks, each answered in the client's
    API shape: its token (401), its raw path and query (400 `invalid_path`/`invalid_query`),
    the provider's route allow-list (404), its body (413, 408, 503) and its model (400
    `model_required`, 404 `model_not_found`). Only then is the upstream request built, from
    the validated parts alone."""

    conductor: Conductor
    tokens: Mapping[bytes, tuple[str, Provider]]  # token digest → (token, provider)
    body_limits: BodyLimits
    bodies: BodyBudget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        request_id = _request_id(headers.get("x-request-id"))
        started = time.perf_counter()
        logs.bind_request(request_id)
        raw_path: bytes = scope["raw_path"]
        raw_query: bytes = scope["query_string"]
        token, via_google = _client_token(headers, raw_query)
        shape: Surface = "gemini" if via_google or raw_path.startswith(b"/v1beta/") else "openai"
        provider = self._provider(token)
        if provider is None:
            await _send_error(send, shape, Refused(401, "invalid_api_key", _NO_TOKEN), request_id)
            self.conductor.metrics.unauthorized(401)
            return
        api = _surface(provider, raw_path, via_google)
        path = target.checked_path(raw_path)
        query = target.checked_query(raw_query)
        if api is None or path is None or query is None:
            refused = _target_refusal(api, path, query)
            await self._refuse(send, provider, api or shape, refused, request_id, started)
            return
        method: str = scope["method"]
        match = provider.routes[api].match(method, path)
        if match is None:
            message = f"This provider does not serve {method} {path}; check the base URL."
            refused = Refused(404, "not_found", message)
            await self._refuse(send, provider, api, refused, request_id, started)
            return
        if match.route.answer != "forward":
            await _answer_locally(send, provider, api, match, request_id)
            return
        try:
            body = await read_body(
                receive,
                headers.get("content-length"),
                self.body_limits,
                self.bodies,
                arrived=scope.get(BODY_ARRIVED, False),
            )
        except ClientGone:
            log.info("client left mid-upload", extra={"request_id": request_id})
            return
        if isinstance(body, Refused):
            await self._refuse(send, provider, api, body, request_id, started)
            return
        try:
            call = _call(
                provider, api, match, method, path, query, scope, headers, body, request_id
            )
            if isinstance(call, Refused):
                await self._refuse(send, provider, api, call, request_id, started)
                return
            call.timing = Timing(started)
            await self._serve(call, scope, send, request_id)
        finally:
            self.bodies.give(len(body))

    def _provider(self, token: str | None) -> Provider | None:
        if not token:
            return None
        found = self.tokens.get(token_digest(token))
        if found is None or not hmac.compare_digest(found[0].encode(), token.encode()):
            return None
        return found[1]

    async def _refuse(
        self,
        send: Send,
        provider: Provider,
        api: Surface,
        refused: Refused,
        request_id: str,
        started: float,
    ) -> None:
        """Answer a request refused before a key was taken; counted and logged (INFO)."""
        await _send_error(send, api, refused, request_id)
        logs.bind_provider(provider.name, OTHER_MODEL)
        self.conductor.metrics.for_provider(provider.name).refused(refused.status)
        logs.request_done(refused.status, 0, refused.code, started)

    async def _serve(self, call: Call, scope: Scope, send: Send, request_id: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watch = _ClientWatch(task)
        scope[ON_DISCONNECT] = watch.client_left
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
            try:
                result = await self.conductor.run(call, deadline)
            except Exception:  # our own bug: logged, answered, blamed on nobody
                log.exception("internal error while serving the request")
                code, ended = 500, "internal_error"
                await _send_error(send, call.api, _INTERNAL, request_id)
                return
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
            scope[ON_DISCONNECT] = None  # from here on nothing may cancel the task
            if forward is not None:
                forward.response.close()
                self.conductor.finish(call, forward, outcome)
            bound.finished(call.model, code, call.timing)
            logs.request_done(code, attempts, ended, call.timing.started)


@dataclass(slots=True)
class _ClientWatch:
    """Cancels the request's task when the client disconnects (`gone` tells the handler). The
    edge's protocol calls `client_left` from its `connection_lost`: no task or timer per
    request."""

    task: asyncio.Task[Any]
    gone: bool = False

    def client_left(self) -> None:
        self.gone = True
        self.task.cancel()


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
    except Exception:  # our own bug mid-relay: logged, and blamed on nobody
        log.exception("internal error while relaying the answer")
        if not started:
            await _send_error(send, call.api, _INTERNAL, request_id)
        return CANCELLED  # returning unfinished makes the server close the connection
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return SUCCESS


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


_ID_PREFIX = secrets.token_hex(6)  # per process, so ids stay unique across gateway processes
_ids = itertools.count(1)


def _request_id(given: str | None) -> str:
    """The client's request id when it is short visible ASCII (it is echoed and forwarded),
    else a new one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ids):012x}"


def _client_token(headers: Mapping[str, str], query: bytes) -> tuple[str | None, bool]:
    """The gateway token and whether it came the Gemini way (x-goog-api-key or ?key=)."""
    google = headers.get("x-goog-api-key")
    if google:
        return google, True
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), False
    if b"key=" in query:
        found = target.query_parameter(query, b"key")
        if found is not None:
            return found, True
    return headers.get("api-key"), False


def _surface(provider: Provider, path: bytes, via_google: bool) -> Surface | None:
    """The wire format of the request: Gemini native (a Gemini provider's `/v1beta/`, or `/v1/`
    with the token sent the Gemini way), else OpenAI under `/v1/`."""
    native = path.startswith(b"/v1beta/") or (path.startswith(b"/v1/") and via_google)
    if native and provider.settings.provider_type == "gemini":
        return "gemini"
    return "openai" if path.startswith(b"/v1/") else None


def _target_refusal(api: Surface | None, path: str | None, query: str | None) -> Refused:
    if api is None:
        return Refused(404, "not_found", "This token's provider does not serve this path.")
    if path is None:
        message = (
            "The request path holds characters or segments the gateway does not forward "
            "(control characters, spaces, '#', '\\', dot-segments, encoded '/' or '\\', "
            "double encoding, or bytes outside RFC 3986)."
        )
        return Refused(400, "invalid_path", message)
    message = "The query string holds characters outside RFC 3986; percent-encode them."
    return Refused(400, "invalid_query", message)


def _call(
    provider: Provider,
    api: Surface,
    match: Match,
    method: str,
    path: str,
    query: str,
    scope: Scope,
    headers: Mapping[str, str],
    body: bytes,
    request_id: str,
) -> Call | Refused:
    """The request as the attempt loop takes it, built from validated parts only."""
    named = named_model(match, body, headers.get("content-type", ""))
    if isinstance(named, Refused):
        return named
    entry = resolve(provider.catalog, match, named, provider.settings.default_model)
    if isinstance(entry, Refused):
        return entry
    forwarded = wire_headers.forwarded(provider.forwarded[api], headers, request_id)
    return Call(
        provider=provider,
        api=api,
        route=match.route,
        method=method,
        path=path,
        query=query,
        headers=forwarded,
        body=body,
        model=entry,
        stream=named.stream,
        client_retry=headers.get("x-stainless-retry-count", "0") not in ("0", ""),
    )


async def _answer_locally(
    send: Send, provider: Provider, api: Surface, match: Match, request_id: str
) -> None:
    """The models list (and, in the OpenAI format, one model) from the configuration and the
    upstream's names the Keeper last fetched: no key is taken for them."""
    names = provider.listed
    if match.route.answer == "models":
        if api == "gemini":
            models, catalog = provider.settings.models, provider.catalog
            body = gemini.models_list(
                [(name, models[catalog.resolve(name) or name].endpoint_suffix) for name in names]
            )
        else:
            body = openai.models_list(names, provider.name)
        await _send(send, 200, _JSON, body, request_id)
        return
    wanted = match.path_model or ""
    if provider.catalog.resolve(wanted) is None:
        message = f"The model {wanted[:80]!r} is not served here."
        await _send_error(send, api, Refused(404, "model_not_found", message), request_id)
        return
    await _send(send, 200, _JSON, openai.model_object(wanted, provider.name), request_id)


_JSON = {"content-type": "application/json"}


def _start(
    status: int,
    headers: Mapping[str, str],
    request_id: str,
    length: int | None,
    *,
    close: bool = False,
) -> Message:
    """The response start: what may be relayed of `headers` (lower-case names), then ours
    (`length`, None when streaming; `close`: the connection ends with this answer) and the
    request id."""
    raw = wire_headers.relayed(headers)
    if length is not None:
        raw.append((b"content-length", b"%d" % length))
    if close:
        raw.append((b"connection", b"close"))
    raw.append((b"x-request-id", request_id.encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


async def _send(
    send: Send, status: int, headers: Mapping[str, str], body: bytes, request_id: str
) -> None:
    await send(_start(status, headers, request_id, len(body)))
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, api: Surface, refused: Refused, request_id: str) -> None:
    """A refusal in the client's API shape (`connection: close` when the body was not read)."""
    body = providers.error_body(api, refused.status, refused.message, code=refused.code)
    headers = _JSON
    if refused.retry_after is not None:
        headers = {**_JSON, "retry-after": str(max(1, int(refused.retry_after + 0.999)))}
    await send(_start(refused.status, headers, request_id, len(body), close=refused.close))
    await send({"type": "http.response.body", "body": body, "more_body": False})
