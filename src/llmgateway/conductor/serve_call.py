"""One call served: its claim on the provider, the attempt loop, and the answer sent to the
client. A provider token's request is one such call; a route's request is one for each target
it asks (`conductor.route_run`), so both kinds of token take the same path, and a route adds
only its plan, its headers and, when a target fails, its fallback.

The client's disconnect is watched per request (`watched`), not per call: it cancels the
request's task, which ends the call's claim here and leaves the rest to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Literal, overload

from starlette.types import Scope, Send

from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.call import Call, Provider
from llmgateway.conductor.claim import CANCELLED, Claim
from llmgateway.conductor.edge import ON_DISCONNECT, ClientWatch
from llmgateway.conductor.replies import GatewayReply
from llmgateway.conductor.responses import INTERNAL, deliver, send_refusal
from llmgateway.conductor.usage_ask import ask_usage
from llmgateway.observe import logs
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.routes import Match, Surface

log = logging.getLogger("llmgateway.api")

Served = tuple[int, int, str]
"""How a call ended: the status sent, the attempts made, and why (for the access line)."""
Shown = tuple[tuple[bytes, bytes], tuple[bytes, bytes]]
"""A route's `x-llmgateway-route` and `x-llmgateway-target` response headers."""


@overload
async def serve_call(
    loop: AttemptLoop,
    call: Call,
    send: Send,
    request_id: str,
    deadline: float,
    *,
    hand_back: Literal[False] = False,
    shown: Shown | None = None,
    before: int = 0,
    claim: Claim | None = None,
) -> Served: ...
@overload
async def serve_call(
    loop: AttemptLoop,
    call: Call,
    send: Send,
    request_id: str,
    deadline: float,
    *,
    hand_back: Literal[True],
    shown: Shown | None = None,
    before: int = 0,
    claim: Claim | None = None,
) -> Served | GatewayReply: ...
async def serve_call(
    loop: AttemptLoop,
    call: Call,
    send: Send,
    request_id: str,
    deadline: float,
    *,
    hand_back: bool = False,
    shown: Shown | None = None,
    before: int = 0,
    claim: Claim | None = None,
) -> Served | GatewayReply:
    """Serve `call` from its provider's pool until `deadline` (loop time) and send the client
    its answer. For a route's target: with `hand_back`, a failed reply is returned unsent (the
    route decides whether another target takes over); `shown`, the route's and the target's
    headers (`x-llmgateway-attempts` follows, counting the `before` attempts of earlier
    targets too); `claim`, the call's claim when the route made it already (a move to another
    target holds a retry slot of its budget).

    Whatever happens, the claim ends here and the provider's metrics count the call (but a
    route's target that found no key to call with); our own bug in the attempt loop is logged
    and answered 500, blamed on nobody."""
    if claim is None:
        claim = Claim(call, loop)
    logs.bind_provider(call.provider.name, call.model)
    bound = loop.metrics.for_provider(call.provider.name)
    bound.started()
    code, outcome = 499, CANCELLED  # until an answer is known
    try:
        try:
            result = await loop.run(call, claim, deadline)
        except Exception:
            log.exception("internal error while serving the request")
            code = 500
            await send_refusal(send, call.api, INTERNAL, request_id)
            return 500, 0, "internal_error"
        if hand_back and isinstance(result, GatewayReply):
            # a target whose every key was out of use made no call: its provider served
            # nothing, and the route answers for it
            code = result.status if result.attempts else 0
            return result
        extra = () if shown is None else (*shown, attempts_header(before + result.attempts))
        code, attempts, ended, outcome = await deliver(
            call, result, send, request_id, deadline, extra, tokens=loop.tokens
        )
        return code, attempts, ended
    finally:
        claim.end(outcome)
        if code:
            bound.finished(call.model, code, call.timing)
        else:
            bound.uncounted()


def attempts_header(attempts: int) -> tuple[bytes, bytes]:
    """The `x-llmgateway-attempts` response header of a route's answer."""
    return (b"x-llmgateway-attempts", b"%d" % attempts)


def build_call(
    provider: Provider,
    api: Surface,
    match: Match,
    entry: str,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    stream: bool,
    options: bool,
    request_id: str,
    ask_usage_chunk: bool,
    *,
    peek_sec: float | None = None,
    max_attempts: int | None = None,
    client: str = "-",
    alias: str = "-",
    metered: bool = False,
) -> Call:
    """The request as the attempt loop takes it, built from validated parts only: the
    provider's `match`ing route, the model `entry` serving it (`admission.resolve`), the
    client's headers the provider's allow-list lets through, and a `stream` asking for its
    usage chunk where `ask_usage_chunk` and the provider say so (unless the client set
    `stream_options`: `options`). The keywords are a route target's."""
    call = Call(
        provider=provider,
        api=api,
        route=match.route,
        method=method,
        path=path,
        query=query,
        headers=wire_headers.forwarded(provider.forwarded[api], headers, request_id),
        body=body,
        model=entry,
        stream=stream,
        client_retry=headers.get("x-stainless-retry-count", "0") not in ("0", ""),
        peek_sec=peek_sec,
        max_attempts=max_attempts,
        client=client,
        alias=alias,
        metered=metered,
    )
    if ask_usage_chunk:
        ask_usage(call, options)
    return call


def watched(scope: Scope) -> ClientWatch:
    """The request's task, cancelled when its client disconnects (the edge's protocol calls
    the scope's `ON_DISCONNECT`). The caller catches that cancellation when `gone` says so,
    and sets `scope[ON_DISCONNECT]` to None once nothing may cancel the task."""
    task = asyncio.current_task()
    assert task is not None
    watch = ClientWatch(task)
    scope[ON_DISCONNECT] = watch.client_left
    return watch
