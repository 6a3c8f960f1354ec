"""Requests made with a gateway-wide token (`gateway.tokens`): read (the model from the JSON
body, or from a Gemini native path), answered locally (the models lists: the aliases and
`<provider>/<model>` names the token may use), or resolved to a route alias or one provider's
model (`core.routes.resolve_model`) and served along it (`conductor.route_run`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from starlette.types import Receive, Scope, Send

from llmgateway import providers as wire
from llmgateway.conductor.admission import (
    ClientGone,
    Refused,
    json_model,
    read_body,
    target_refusal,
)
from llmgateway.conductor.edge import BODY_ARRIVED
from llmgateway.conductor.responses import JSON, send_refusal, send_whole
from llmgateway.conductor.route_run import GEMINI_MODELS, NOT_SERVED, Asked, Run, Serving
from llmgateway.conductor.route_state import Routing
from llmgateway.config.route_settings import any_match
from llmgateway.core.clients import ClientRules
from llmgateway.core.routes import (
    Grants,
    NotFound,
    ProviderHit,
    Reach,
    Route,
    RouteHit,
    StreamCommit,
    Surface,
    Target,
    resolve_model,
)
from llmgateway.observe import logs
from llmgateway.observe.metrics import NO_PROVIDER
from llmgateway.observe.provider_metrics import OTHER_MODEL
from llmgateway.providers import target as wire_target
from llmgateway.providers.routes import surface_of

log = logging.getLogger("llmgateway.api")


async def grant_run(
    edge: Serving,
    grants: Grants,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: Mapping[str, str],
    request_id: str,
    started: float,
    sent: Surface,
) -> tuple[Run, Route] | None:
    """A request made with a gateway token or a client's, whose `grants` say what it may use,
    let through the client's gate (`conductor.client_gate`) when it has rules, read and
    resolved: the run that serves it along its route (the caller awaits `Run.serve`, which
    gives back the body's share of the in-flight budget and the client's hold), or None when
    it was answered here (a refusal, a models list, a client gone mid-upload)."""
    routing = edge.routing
    assert routing is not None
    rules = grants.client
    hold = None
    if rules is not None:
        admitted = await routing.clients.admit(rules, scope, edge.access.trusted)
        if isinstance(admitted, Refused):
            surface = surface_of(sent, scope["raw_path"])
            await _refuse(edge, scope, send, surface, request_id, started, admitted)
            return None
        hold = admitted
    run = None  # set once the run takes the hold over
    try:
        found = await _read(edge, grants, scope, receive, send, headers, request_id, started, sent)
        if found is not None and rules is not None and rules.tpm is not None:
            found = await _reserve(edge, found, rules, scope, send, request_id, started)
        run = found
    finally:
        if run is not None:
            run[0].hold = hold
        elif hold is not None:  # answered here, or cancelled: the hold ends here
            routing.clients.release(hold)
    return run


async def _reserve(
    edge: Serving,
    run: tuple[Run, Route],
    rules: ClientRules,
    scope: Scope,
    send: Send,
    request_id: str,
    started: float,
) -> tuple[Run, Route] | None:
    """The client's tokens reserved against its `tpm` now that the body is read; refused (or
    cancelled), the body's share of the in-flight budget is given back here."""
    served = run[0]
    handed_over = False
    try:
        spent = await served.routing.clients.reserve(rules, served.asked.body)
        if not isinstance(spent, Refused):
            served.spend, handed_over = spent, True
            return run
    finally:
        if not handed_over:
            edge.bodies.give(len(served.asked.body))
    await _refuse(edge, scope, send, served.asked.surface, request_id, started, spent)
    return None


async def _read(
    edge: Serving,
    grants: Grants,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: Mapping[str, str],
    request_id: str,
    started: float,
    sent: Surface,
) -> tuple[Run, Route] | None:
    """`grant_run` past the client's gate."""
    routing = edge.routing
    assert routing is not None
    raw_path: bytes = scope["raw_path"]
    surface = surface_of(sent, raw_path)
    path = wire_target.checked_path(raw_path)
    query = wire_target.checked_query(scope["query_string"])
    if path is None or query is None:
        await _refuse(
            edge, scope, send, surface, request_id, started, target_refusal(surface, path, query)
        )
        return None
    method: str = scope["method"]
    reach = grants.on(surface)
    if method == "GET":
        await _Answer(edge, scope, send, surface, request_id, started).models(routing, reach, path)
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
    handed_over = False
    try:
        asked = _asked(surface, method, path, query, model, verb, body, grants.name)
        found = asked if isinstance(asked, Refused) else _route_of(routing, asked, reach, grants)
        if isinstance(found, Refused):
            await _refuse(edge, scope, send, surface, request_id, started, found)
            return None
        assert isinstance(asked, Asked)
        route, configured = found
        run = Run(edge, routing, asked, scope, send, headers, request_id, started, configured)
        handed_over = True
        return run, route
    finally:
        if not handed_over:
            edge.bodies.give(len(body))


def _asked(
    surface: Surface,
    method: str,
    path: str,
    query: str,
    model: str,
    verb: str,
    body: bytes,
    client: str,
) -> Asked | Refused:
    """The request as read; the model from the JSON body on the OpenAI surface."""
    if surface == "gemini":
        stream = verb == "streamGenerateContent"
        return Asked(
            surface, method, path, query, model, verb, body, stream, plain=False, client=client
        )
    named = json_model(body, required=True)
    if isinstance(named, Refused):
        return named
    if named.model is None:
        message = "The request must name a model: a route alias or <provider>/<model>."
        return Refused(400, "model_required", message)
    return Asked(
        surface,
        method,
        path,
        query,
        named.model,
        "",
        body,
        named.stream,
        named.plain,
        named.options,
        client,
    )


def _route_of(
    routing: Routing, asked: Asked, reach: Reach, grants: Grants
) -> tuple[Route, bool] | Refused:
    """The route serving the request, and whether it is a configured alias (counted in the
    route metrics) rather than one provider's model named `<provider>/<model>`."""
    rules = grants.client
    if rules is not None and rules.models and not any_match(rules.models, asked.model):
        hit: RouteHit | ProviderHit | NotFound = NotFound(asked.model)
    else:
        hit = resolve_model(asked.model, reach)
    if isinstance(hit, RouteHit):
        return hit.route, True
    if isinstance(hit, ProviderHit) and routing.served(hit.provider, hit.model) is not None:
        direct = Target(hit.provider, hit.model)
        alias = f"{hit.provider}/{hit.model}"
        only = Route(alias, ((direct,),), frozenset(), max_targets=1, headers=False)
        return replace(only, stream_commit=StreamCommit.FIRST_BYTE), False
    shown = asked.model if len(asked.model) <= 80 else asked.model[:80] + "…"
    message = f"The model {shown!r} is not one this token may use; GET /v1/models lists them."
    return Refused(404, "model_not_found", message)


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
