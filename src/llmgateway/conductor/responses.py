"""What the edge sends the client, as ASGI messages: a whole reply (its own, a refusal, or an
upstream answer read whole), or an upstream answer relayed as it streams, event by event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from starlette.types import Message, Send

from llmgateway import providers
from llmgateway.conductor.admission import Refused
from llmgateway.conductor.attempts import Relay
from llmgateway.conductor.call import Call
from llmgateway.conductor.claim import CANCELLED
from llmgateway.conductor.replies import GatewayReply
from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.config.settings import DebugMode
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.stream_usage import UsageStrip
from llmgateway.observe import debug
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.routes import Surface
from llmgateway.providers.usage import UsageScan

log = logging.getLogger("llmgateway.api")

SUCCESS = Outcome(reason=None, blame=Blame.NONE, status=200)
STREAM_CUT = Outcome(reason=ErrorReason.STREAM_DISCONNECT, blame=Blame.PROVIDER)
STREAM_TIMEOUT = Outcome(reason=ErrorReason.TIMEOUT, blame=Blame.PROVIDER)
INTERNAL = Refused(
    500,
    "internal_error",
    "The gateway failed to serve this request (an internal error, logged with its id).",
)
JSON = {"content-type": "application/json"}


Extra = Sequence[tuple[bytes, bytes]]
"""Headers of the gateway's own added to an answer (a route's `x-llmgateway-*`)."""


async def deliver(
    call: Call,
    result: Relay | GatewayReply,
    send: Send,
    request_id: str,
    deadline: float,
    extra: Extra = (),
    *,
    tokens: TokenWriter | None = None,
) -> tuple[int, int, str, Outcome]:
    """Send what the attempt loop ended with: a reply of the gateway's own making, or the
    upstream's answer (whole, or relayed as it streams until `deadline`, loop time). Returns the
    status sent, the attempts made, how it ended (for the access line) and the outcome the
    relay's key learns (`CANCELLED`: nothing to learn, a reply was sent). An answer relayed,
    wholly or not, counts in `tokens` with the usage read from its bytes; a call holding a
    tokens-per-minute reservation (its client's or its key's) gets that usage as `call.used`."""
    if isinstance(result, GatewayReply):
        await send_whole(send, result.status, result.headers, result.body, request_id, extra)
        return result.status, result.attempts, result.reason, CANCELLED
    metered = call.metered or call.provider.metered  # a tpm reservation waits for the usage
    scan = UsageScan(call.api) if tokens is not None or metered else None
    try:
        if result.body is not None:
            if scan is not None:
                scan.feed(result.body)
            outcome = await relay_whole(call, result, send, request_id, extra)
        else:
            remaining = deadline - asyncio.get_running_loop().time()
            outcome = await relay_stream(call, result, send, request_id, remaining, extra, scan)
    finally:
        if scan is not None:
            found = scan.tokens()
            if metered:
                call.used = None if found is None else found.input + found.output
            if tokens is not None:
                provider = call.provider.name
                tokens.count(call.client, call.alias, provider, call.model, result.key_id, found)
    ended = outcome.reason.value if outcome.reason else "ok"
    return result.response.status, result.attempts, ended, outcome


async def relay_whole(
    call: Call, relay: Relay, send: Send, request_id: str, extra: Extra = ()
) -> Outcome:
    """Send an upstream answer read whole (see `attempts.WHOLE_BODY_LIMIT`) in one piece."""
    assert relay.body is not None
    response = relay.response
    if call.provider.settings.gateway_policy.debug_mode is DebugMode.FULL_BODY:
        debug.whole_body(relay.body, relay.secret)
    await send_whole(send, response.status, response.headers, relay.body, request_id, extra)
    return SUCCESS


async def relay_stream(
    call: Call,
    relay: Relay,
    send: Send,
    request_id: str,
    remaining: float,
    extra: Extra = (),
    scan: UsageScan | None = None,
) -> Outcome:
    """Send an upstream answer chunk by chunk as it arrives, within `remaining` seconds; reports
    how it ended. `scan` reads the usage as the chunks go by; a stream whose usage chunk the
    gateway asked for (`call.strip_usage`) goes without what that added."""
    response = relay.response
    chunks: AsyncIterator[bytes] = response.chunks()
    if call.provider.settings.gateway_policy.debug_mode is DebugMode.FULL_BODY:
        chunks = debug.tee(chunks, relay.secret)
    strip = UsageStrip() if call.strip_usage else None
    timing = call.timing
    started = False
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            length = response.content_length
            start = start_message(
                response.status, response.headers, request_id, length, extra=extra
            )
            await send(start)
            started = True
            held = relay.held  # what a peek took of the stream (`stream_peek`)
            if held and scan is not None:
                scan.feed(held)
            if held and strip is not None:
                held = strip.feed(held)
            if held:
                await send({"type": "http.response.body", "body": held, "more_body": True})
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
                if scan is not None:
                    scan.feed(chunk)
                if strip is not None:
                    chunk = strip.feed(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if strip is not None and (rest := strip.rest()):
                await send({"type": "http.response.body", "body": rest, "more_body": True})
    except OSError as error:  # timeouts included; both transports raise OSErrors only
        return await _broke_off(call, relay, send, request_id, error, started)
    except Exception:  # our own bug mid-relay: logged, and blamed on nobody
        log.exception("internal error while relaying the answer")
        if not started:
            await send_refusal(send, call.api, INTERNAL, request_id)
        return CANCELLED  # returning unfinished makes the server close the connection
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return SUCCESS


async def _broke_off(
    call: Call, relay: Relay, send: Send, request_id: str, error: OSError, started: bool
) -> Outcome:
    """The upstream failed mid-answer: tell the client as well as the bytes it already has
    allow, and say how the stream ended."""
    timed_out = isinstance(error, TimeoutError)
    log.warning("upstream failed mid-response: %s", type(error).__name__)
    status = 504 if timed_out else 502
    message = "The upstream timed out mid-answer." if timed_out else "The upstream broke off."
    if not started:  # nothing reached the client yet: a clean error response
        body = providers.error_body(call.api, status, message, code="upstream_broke_off")
        await send_whole(send, status, JSON, body, request_id)
    elif "text/event-stream" in relay.response.headers.get("content-type", ""):
        # the stream has begun: the error goes in-band
        event = providers.sse_error_event(call.api, status, message)
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    # else: a large plain body cut mid-way; returning without ending it makes the server
    # close the connection, so the client sees a truncated answer rather than a short one
    return STREAM_TIMEOUT if timed_out else STREAM_CUT


def start_message(
    status: int,
    headers: Mapping[str, str],
    request_id: str,
    length: int | None,
    *,
    close: bool = False,
    extra: Extra = (),
) -> Message:
    """The response start: what may be relayed of `headers` (lower-case names), then ours
    (`length`, None when streaming; `close`: the connection ends with this answer; `extra`)
    and the request id."""
    raw = wire_headers.relayed(headers)
    raw.extend(extra)
    if length is not None:
        raw.append((b"content-length", b"%d" % length))
    if close:
        raw.append((b"connection", b"close"))
    raw.append((b"x-request-id", request_id.encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


async def send_whole(
    send: Send,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request_id: str,
    extra: Extra = (),
) -> None:
    """A response in one piece."""
    await send(start_message(status, headers, request_id, len(body), extra=extra))
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_refusal(send: Send, api: Surface, refused: Refused, request_id: str) -> None:
    """A refusal in the client's API shape (`connection: close` when the body was not read)."""
    body = providers.error_body(api, refused.status, refused.message, code=refused.code)
    headers = JSON
    if refused.retry_after is not None:
        headers = {**JSON, "retry-after": str(max(1, int(refused.retry_after + 0.999)))}
    extra = [(name.encode(), value.encode()) for name, value in refused.headers]
    start = start_message(
        refused.status, headers, request_id, len(body), close=refused.close, extra=extra
    )
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
