"""Requests made with a gateway-wide token (`gateway.tokens`) or a client's: read (the model
from the JSON body, or from a Gemini native path), answered locally (the models lists: the
aliases and `<provider>/<model>` names the token may use), or resolved to a route alias or one
provider's model (`core.routes.resolve_model`) and served by the first target of its route
(`serve_route`), the rest of the way left to `conductor.route_run` when that one fails; a
client's requests pass its gate first (`serve_client`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from llmgateway import providers as wire
from llmgateway.conductor.admission import (
    ClientGone,
    Refused,
    json_model,
    read_body,
    target_refusal,
)
from llmgateway.conductor.call import Call
from llmgateway.conductor.client_gate import Spend
from llmgateway.conductor.edge import BODY_ARRIVED, ON_DISCONNECT
from llmgateway.conductor.replies import GatewayReply
from llmgateway.conductor.responses import JSON, send_refusal, send_whole
from llmgateway.conductor.route_run import GEMINI_MODELS, Asked, Run, Serving, target_call
from llmgateway.conductor.route_state import NOT_SERVED, Routing
from llmgateway.conductor.serve_call import serve_call, watched
from llmgateway.config.route_settings import any_match
from llmgateway.core.clients import ClientRules
from llmgateway.core.route_plan import first
from llmgateway.core.routes import (
    Grants,
    NotFound,
    ProviderHit,
    Reach,
    Surface,
    resolve_model,
)
from llmgateway.observe import logs
from llmgateway.observe.metrics import NO_PROVIDER
from llmgateway.observe.provider_metrics import OTHER_MODEL, Timing
from llmgateway.providers import target as wire_target

log = logging.getLogger("llmgateway.api")


async def serve_client(
    edge: Serving,
    grants: Grants,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: Mapping[str, str],
    request_id: str,
    started: float,
    surface: Surface,
) -> None:
    """Serve a request made with a token whose `grants` come with a client's rules: let
    through the client's gate (`conductor.client_gate`), read, its tokens reserved against the
    client's tpm, and served along its route (`serve_route`); or answered here (a refusal, a
    models list). A token without rules skips the gate: the edge reads (`read_granted`) and
    serves it itself."""
    routing = edge.routing
    assert routing is not None
    rules = grants.client
    assert rules is not None
    admitted = await routing.clients.admit(rules, scope, edge.access.trusted)
    if isinstance(admitted, Refused):
        await _refuse(edge, scope, send, surface, request_id, started, admitted)
        return
    try:
        asked = await read_granted(
            edge, grants, scope, receive, send, headers, request_id, started, surface
        )
        if asked is None:
            return
        spend = None
        if rules.tpm is not None:
            spend = await _reserve(edge, asked, rules, scope, send, request_id, started)
            if spend is None:
                return
        await serve_route(edge, asked, scope, send, headers, request_id, started, spend)
    finally:
        if admitted is not None:
            routing.clients.release(admitted)


async def serve_route(
    edge: Serving,
    asked: Asked,
    scope: Scope,
    send: Send,
    headers: Mapping[str, str],
    request_id: str,
    started: float,
    spend: Spend | None = None,
) -> None:
    """Serve a request along its route and answer the client whatever happens; at the end the
    body's share of the in-flight budget is given back, the client's tpm reservation (`spend`)
    settled, and the request counted and logged.

    The first target is asked here, as a provider token's call is (`serve_call`): most
    requests end with it, and pay for the route no more than its draw, its headers and its
    count. Only when it fails does a `Run` take over, for the rest of the plan. The targets
    are asked from this coroutine rather than from one it awaits: each level of awaits between
    the edge and the attempt loop runs again every time the request's task wakes up (a dozen
    times for a streamed answer)."""
    routing = edge.routing
    assert routing is not None
    route = asked.route
    watch = watched(scope)
    code, attempts, ended, outcome = 499, 0, "client_gone", "client_gone"
    answered: Call | None = None  # the call whose answer is relayed (its usage settles `spend`)
    run: Run | None = None
    try:
        target = first(route, routing.rng)
        call = target_call(edge, route, target, asked, headers, request_id, spend is not None)
        deadline = None
        if isinstance(call, Refused):
            got: GatewayReply | Refused = call
        else:
            call.timing = Timing(started)
            deadline = asyncio.get_running_loop().time() + call.provider.settings.timeouts.total
            shown = (route.header, target.header) if route.headers else None
            answered = call  # its `used` stays 0 unless an answer is relayed
            served = await serve_call(
                edge.attempt_loop, call, send, request_id, deadline, hand_back=True, shown=shown
            )
            if isinstance(served, tuple):
                code, attempts, ended = served
                outcome = "ok"
                return
            got = served
        run = Run(
            edge,
            routing,
            asked,
            scope,
            send,
            headers,
            request_id,
            started,
            spend is not None,
            deadline,
        )
        outcome = await run.go_on(route, target, got)
    except asyncio.CancelledError:
        if not watch.forgiven(request_id):
            raise
    finally:
        scope[ON_DISCONNECT] = None  # from here on nothing may cancel the task
        edge.bodies.give(len(asked.body))
        if run is not None:
            code, attempts, ended, answered = run.code, run.attempts, run.ended, run.answer
        if spend is not None:  # no answer relayed: nothing used
            routing.clients.spent(spend, answered.used if answered is not None else 0)
        if asked.configured:
            edge.attempt_loop.metrics.routes.request(route.alias, outcome)
        edge.access.done(scope, code, attempts, ended, started)


async def _reserve(
    edge: Serving,
    asked: Asked,
    rules: ClientRules,
    scope: Scope,
    send: Send,
    request_id: str,
    started: float,
) -> Spend | None:
    """The client's tokens reserved against its `tpm` now that the body is read; refused (then
    answered here) or cancelled, the body's share of the in-flight budget is given back."""
    routing = edge.routing
    assert routing is not None
    spent: Spend | Refused | None = None
    try:
        spent = await routing.clients.reserve(rules, asked.body)
    finally:
        if not isinstance(spent, Spend):
            edge.bodies.give(len(asked.body))
    if isinstance(spent, Refused):
        await _refuse(edge, scope, send, asked.surface, request_id, started, spent)
        return None
    return spent


async def read_granted(
    edge: Serving,
    grants: Grants,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: Mapping[str, str],
    request_id: str,
    started: float,
    surface: Surface,
) -> Asked | None:
    """A request made with a gateway token or a client's, whose `grants` say what it may use,
    read and resolved to its route; or None when it was answered here (a refusal, a models
    list; the body's share of the in-flight budget then given back). `serve_route` serves
    it."""
    routing = edge.routing
    assert routing is not None
    raw_path: bytes = scope["raw_path"]
    path = wire_target.checked_path(raw_path)
    query = wire_target.checked_query(scope["query_string"])
    if path is None or query is None:
        await _refuse(
            edge, scope, send, surface, request_id, started, target_refusal(surface, path, query)
        )
        return None
    method: str = scope["method"]
    if method == "GET":
        answer = _Answer(edge, scope, send, surface, request_id, started)
        await answer.models(routing, grants.reach[surface], path)
        return None
    model, verb = "", ""
    if surface == "gemini":
        prefix = next((p for p in GEMINI_MODELS if path.startswith(p)), "")
        model, _, verb = path[len(prefix) :].rpartition(":") if prefix else ("", "", "")
        if not model or not verb:
            await _refuse(edge, scope, send, surface, request_id, started, NOT_SERVED)
            return None
    try:
        body = await read_body(
            receive,
            headers.get("content-length"),
            edge.body_limits,
            edge.bodies,
            arrived=scope.get(BODY_ARRIVED, False),
        )
    except ClientGone:
        edge.access.done(scope, 499, 0, "client_gone", started)
        return None
    if isinstance(body, Refused):
        await _refuse(edge, scope, send, surface, request_id, started, body)
        return None
    try:
        asked = _resolved(routing, grants, surface, method, path, query, model, verb, body)
    except BaseException:
        edge.bodies.give(len(body))
        raise
    if isinstance(asked, Refused):
        edge.bodies.give(len(body))
        await _refuse(edge, scope, send, surface, request_id, started, asked)
        return None
    return asked


def _resolved(
    routing: Routing,
    grants: Grants,
    surface: Surface,
    method: str,
    path: str,
    query: str,
    model: str,
    verb: str,
    body: bytes,
) -> Asked | Refused:
    """The request as read (the model from the JSON body, but on the Gemini surface), with the
    route serving it: an alias the token may use, else `<provider>/<model>` for a provider it
    may use (`core.routes.resolve_model`), else 404."""
    stream, plain, options = verb == "streamGenerateContent", False, False
    if surface != "gemini":
        named = json_model(body, required=True)
        if isinstance(named, Refused):
            return named
        if named.model is None:
            message = "The request must name a model: a route alias or <provider>/<model>."
            return Refused(400, "model_required", message)
        model, stream, plain, options = named.model, named.stream, named.plain, named.options
    rules = grants.client
    route = None
    if rules is None or not rules.models or any_match(rules.models, model):
        reach = grants.reach[surface]
        route = reach.routes.get(model)
        configured = route is not None
        if route is None:
            hit = resolve_model(model, reach)
            if isinstance(hit, ProviderHit):
                route = routing.direct(hit.provider, hit.model)
    if route is None:
        shown = model if len(model) <= 80 else model[:80] + "…"
        message = f"The model {shown!r} is not one this token may use; GET /v1/models lists them."
        return Refused(404, "model_not_found", message)
    return Asked(
        surface,
        method,
        path,
        query,
        model,
        verb,
        body,
        stream,
        plain,
        options,
        grants.name,
        route,
        configured,
    )


async def _refuse(
    edge: Serving,
    scope: Scope,
    send: Send,
    surface: Surface,
    request_id: str,
    started: float,
    refused: Refused,
) -> None:
    """A request refused before any target was asked: answered, counted and logged."""
    await send_refusal(send, surface, refused, request_id)
    edge.attempt_loop.metrics.unauthorized(refused.status)
    logs.bind_provider(NO_PROVIDER, OTHER_MODEL)
    edge.access.done(scope, refused.status, 0, refused.code, started)


@dataclass(frozen=True, slots=True)
class _Answer:
    """A models list asked with a gateway token (or its refusal), counted and logged."""

    edge: Serving
    scope: Scope
    send: Send
    surface: Surface
    request_id: str
    started: float

    async def refuse(self, refused: Refused) -> None:
        args = (self.scope, self.send, self.surface, self.request_id, self.started)
        await _refuse(self.edge, *args, refused)

    async def models(self, routing: Routing, reach: Reach, path: str) -> None:
        """The models list (the aliases the token may use, then `<provider>/<model>` of its
        providers), or one model of it (OpenAI surface)."""
        names = sorted(reach.routes)
        for name in sorted(reach.providers):
            names += [f"{name}/{model}" for model in routing.providers[name].listed]
        if self.surface == "gemini" and path in ("/v1beta/models", "/v1/models"):
            body = wire.gemini.models_list([(name, ":generateContent") for name in names])
        elif self.surface == "openai" and path == "/v1/models":
            body = wire.openai.models_list(names, "llmgateway")
        elif self.surface == "anthropic" and path == "/v1/models":
            body = wire.anthropic.models_list(names)
        elif self.surface != "gemini" and path.startswith("/v1/models/"):
            wanted = path[len("/v1/models/") :]
            if isinstance(resolve_model(wanted, reach), NotFound):
                message = "No such model for this token; GET /v1/models lists them."
                await self.refuse(Refused(404, "model_not_found", message))
                return
            if self.surface == "anthropic":
                body = wire.anthropic.model_object(wanted)
            else:
                body = wire.openai.model_object(wanted, "llmgateway")
        else:
            await self.refuse(NOT_SERVED)
            return
        await send_whole(self.send, 200, JSON, body, self.request_id)
        logs.bind_provider(NO_PROVIDER, OTHER_MODEL)
        self.edge.access.done(self.scope, 200, 0, "local", self.started)
