"""The way of one request made with a gateway token along its route once its first target
failed (`conductor.routing.serve_route` asks that one): the rest of the route's plan asked in
turn (`core.route_plan`), each target with the attempt loop's key-level retries, until one
answers, a failure is not one to fall back from, or the plan, the deadline or the retry budget
runs out (then `exhausted` says the answer); and how a target takes the request
(`target_call`).

A further target is asked only while it has a key it may use now (`Routing.eligible`: O(1)
from the pool's bag and the provider's breaker, no key looked at). A move to another target
takes a slot of that provider's retry budget and must fit the request's deadline. Only the
model is rewritten: the body's top-level `model` (`core.model_rewrite`), or the model segment
of a Gemini native path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import Scope, Send

from llmgateway import providers as wire
from llmgateway.conductor.admission import (
    BodyBudget,
    BodyLimits,
    Refused,
)
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.call import Call
from llmgateway.conductor.claim import CANCELLED, Claim
from llmgateway.conductor.replies import GatewayReply
from llmgateway.conductor.responses import JSON, Extra, send_whole
from llmgateway.conductor.route_state import Routing
from llmgateway.conductor.serve_call import attempts_header, build_call, serve_call
from llmgateway.core.model_rewrite import rewrite_model
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.route_plan import (
    NO_HEALTHY_KEY,
    Failure,
    Step,
    exhausted,
    next_step,
    plan,
)
from llmgateway.core.routes import Route, Surface, Target, target_header
from llmgateway.observe.access import AccessLog
from llmgateway.observe.provider_metrics import Timing
from llmgateway.observe.route_metrics import NO_TARGET

log = logging.getLogger("llmgateway.api")

GEMINI_MODELS = ("/v1beta/models/", "/v1/models/")
"""Where a Gemini native path names its model (`/v1beta/models/{model}:{method}`, or `/v1/`)."""
MAX_HOPS = 8
"""Context-length fallbacks one request follows at most (the config refuses cycles)."""
_REASONS = frozenset(reason.value for reason in ErrorReason)
_RATE_LIMITS = frozenset({"rate_limited", "egress_rate_limited"})


class Serving(Protocol):
    """What a gateway token's request uses of the edge (`conductor.endpoints.Edge` is one)."""

    @property
    def attempt_loop(self) -> AttemptLoop: ...
    @property
    def access(self) -> AccessLog: ...
    @property
    def body_limits(self) -> BodyLimits: ...
    @property
    def bodies(self) -> BodyBudget: ...
    @property
    def routing(self) -> Routing | None: ...


@dataclass(slots=True)  # not frozen: made for every request, and frozen inits cost more
class Asked:
    """A gateway token's request as read: the surface it came in on, its validated method,
    path and query, the model it names, the Gemini method after the model (`verb`, "" on
    the OpenAI surface), its body and whether it streams; and the route serving it."""

    surface: Surface
    method: str
    path: str
    query: str
    model: str
    verb: str
    body: bytes
    stream: bool
    plain: bool  # the body names `model` once, with no `\\u` escape (`rewrite_model`'s)
    options: bool  # the body sets `stream_options` (`usage_ask`)
    client: str  # the gateway token's name
    route: Route  # the route serving it
    configured: bool  # the route is an alias of the config (counted in the route metrics)


_NO_TARGET_HEADER = target_header(NO_TARGET)
_ANSWERED = "answered"  # the target's answer went to the client
_NOT_STARTED = "not_started"  # no time or no retry budget left for another target
_SKIPPED = "skipped"  # the first target had no key it may use: skipped as the plan skips


@dataclass(slots=True)
class Run:
    """The rest of a request's way along its route once its first target failed: the rest of
    the plan, and the route's context-length aliases."""

    edge: Serving
    routing: Routing
    asked: Asked
    scope: Scope
    send: Send
    headers: Mapping[str, str]
    request_id: str
    started: float
    metered: bool  # holds a client's tpm reservation: its answers' usage is read
    deadline: float | None  # loop time; None until a target is asked
    failures: list[Failure] = field(default_factory=list)
    unserved: list[Refused] = field(default_factory=list)  # targets that cannot take it
    attempts: int = 0
    target: Target | None = None  # the last target asked
    reply: GatewayReply | None = None  # the last reply of a target that called upstream
    code: int = 499
    ended: str = "client_gone"
    answer: Call | None = None  # the call whose answer is relayed
    tried: list[Target] = field(default_factory=list)  # the targets the current plan asked
    skipped: list[Target] = field(default_factory=list)  # and the ones it left out

    async def go_on(self, route: Route, target: Target, got: GatewayReply | Refused) -> str:
        """Go on from the plan's first target (`target`, which answered `got`) to the end: the
        request's outcome for the route metrics. A first target that made no upstream call
        and has no key it may use now was not eligible: it is skipped, as the plan skips
        the ineligible (it counts neither as tried nor towards `max_targets`)."""
        routing = self.routing
        outcome: GatewayReply | Refused | str = got
        if (
            isinstance(got, GatewayReply)
            and got.attempts == 0
            and not routing.eligible(target.provider, target.model)
        ):
            self.skipped.append(target)
            targets = plan(route, routing.eligible, routing.rng, self.skipped)
            outcome = _SKIPPED
        else:
            self.tried.append(target)
            if isinstance(got, GatewayReply):  # it was asked (a Refused one could not be)
                self.target = target
            targets = plan(route, routing.eligible, routing.rng, self.skipped, (target,))
        current, hops = route, 0
        while True:
            then = self._then(current, target, outcome, targets)
            if isinstance(then, GatewayReply):
                await self._send(current, then)
                return "error"
            if isinstance(then, Route):
                if hops == MAX_HOPS:
                    break
                current, hops = then, hops + 1
                self.tried, self.skipped = [], []
                targets = plan(current, routing.eligible, routing.rng, self.skipped)
                then = next(targets, None)
            if then is None:
                break
            target = then
            self.tried.append(target)
            outcome = await self._asked(current, target)
            if outcome == _ANSWERED:
                return "ok"
        return await self._exhausted(current)

    def _then(
        self,
        route: Route,
        target: Target,
        got: GatewayReply | Refused | str,
        targets: Iterator[Target],
    ) -> Target | Route | GatewayReply | None:
        """What follows a target that did not answer (or was skipped): the next target of the
        plan, the route's context-length alias, a reply to send as the answer, or None
        (exhausted: the plan ran out, or no time or retry budget was left to start another
        target)."""
        if got == _NOT_STARTED:
            return None
        if got == _SKIPPED:  # not eligible after all: the plan goes on without it
            return next(targets, None)
        if isinstance(got, Refused):  # the target cannot serve this path or method
            self.failures.append(Failure(target, NO_HEALTHY_KEY, called=False))
            self.unserved.append(got)
            return next(targets, None)
        assert isinstance(got, GatewayReply)
        self.attempts += got.attempts
        failure = _failure(target, got)
        self.failures.append(failure)
        if failure.called:
            self.reply = got
        step = next_step(route, failure.reason, got.status)
        if step is Step.CONTEXT_ALIAS:
            alias = route.context_length_fallback or ""
            following_route = self.routing.table.route(self.asked.surface, alias)
            if following_route is None:
                return got
            self._fell_back(route, target, f"route:{alias}", "context_length")
            return following_route
        if step is not Step.NEXT_TARGET:
            return got
        following = next(targets, None)
        self._fell_back(route, target, following.label if following else NO_TARGET, failure.reason)
        if failure.reason == ErrorReason.NO_MODEL:
            self.routing.config_warning(route, target)
        return following

    async def _asked(self, route: Route, target: Target) -> GatewayReply | Refused | str:
        """One more target: its key-level attempts, and its answer relayed when it has one (or
        why the target cannot take the request at all)."""
        call = target_call(
            self.edge,
            route,
            target,
            self.asked,
            self.headers,
            self.request_id,
            self.metered,
        )
        if isinstance(call, Refused):
            return call
        loop = asyncio.get_running_loop()
        timeouts = call.provider.settings.timeouts
        if self.deadline is None:
            self.deadline = loop.time() + timeouts.total
        elif loop.time() + timeouts.connect >= self.deadline:
            return _NOT_STARTED
        claim = Claim(call, self.edge.attempt_loop)
        if self.target is not None and not claim.may_retry():  # a fallback is a retry
            claim.end(CANCELLED)
            return _NOT_STARTED
        self.target = target
        call.timing = Timing(self.started)
        shown = (route.header, target.header) if route.headers else None
        self.answer = call  # its `used` stays 0 unless an answer is relayed
        served = await serve_call(
            self.edge.attempt_loop,
            call,
            self.send,
            self.request_id,
            self.deadline,
            hand_back=True,
            shown=shown,
            before=self.attempts,
            claim=claim,
        )
        if isinstance(served, GatewayReply):
            return served
        self.code, attempts, self.ended = served
        self.attempts += attempts
        return _ANSWERED

    async def _send(self, route: Route, reply: GatewayReply) -> None:
        shown = self._shown(route, self.target)
        await send_whole(self.send, reply.status, reply.headers, reply.body, self.request_id, shown)
        self.code, self.ended = reply.status, reply.reason

    async def _exhausted(self, route: Route) -> str:
        """Every target failed (or no time or budget was left): the answer `exhausted` says;
        but when no target could take the request at all (a path or method none serves), it
        is the client's fault, refused as such (no key is missing: a retry fails alike)."""
        self.failures += [self.routing.skipped(t) for t in self.skipped]
        unreached = (t for t in route.targets if t not in self.tried and t not in self.skipped)
        for target in unreached:  # left out of the plan by the cap, or the deadline
            if not self.routing.eligible(target.provider, target.model):
                self.failures.append(self.routing.skipped(target))
        if self.unserved and len(self.unserved) == len(self.failures):
            first = self.unserved[0]  # its message may name a target's model: not shown
            message = f"No target of {route.alias} serves this path and method."
            await self._own(route, Refused(first.status, first.code, message))
            return "error"
        found = exhausted(self.failures)
        if self.asked.configured:
            exhaustion = self.edge.attempt_loop.metrics.routes.exhausted
            exhaustion.labels(route.alias, str(found.status)).inc()
        if found.relay is not None and self.reply is not None:
            await self._send(route, self.reply)
            return "exhausted"
        if found.status == 429:
            message = (
                f"Every target of {route.alias} is rate-limited; retry after the indicated time."
            )
        else:
            message = f"No target of {route.alias} has a usable key right now."
        await self._own(route, Refused(found.status, found.code, message, False, found.retry_after))
        return "exhausted"

    async def _own(self, route: Route, answer: Refused) -> None:
        """An answer of the gateway's own, in the surface's error shape."""
        surface = self.asked.surface
        body = wire.error_body(surface, answer.status, answer.message, code=answer.code)
        headers = dict(JSON)
        if answer.retry_after is not None:
            headers["retry-after"] = str(max(1, int(answer.retry_after + 0.999)))
        shown = self._shown(route, self.target)
        await send_whole(self.send, answer.status, headers, body, self.request_id, shown)
        self.code, self.ended = answer.status, answer.code

    def _fell_back(self, route: Route, left: Target | None, to: str, reason: str) -> None:
        if self.asked.configured:
            source = left.label if left is not None else NO_TARGET
            fallbacks = self.edge.attempt_loop.metrics.routes.fallbacks
            fallbacks.labels(route.alias, source, to, reason).inc()

    def _shown(self, route: Route, target: Target | None) -> Extra:
        """The `x-llmgateway-*` headers, when the route shows them."""
        if not route.headers:
            return ()
        named = target.header if target is not None else _NO_TARGET_HEADER
        return (route.header, named, attempts_header(self.attempts))


def target_call(
    edge: Serving,
    route: Route,
    target: Target,
    asked: Asked,
    headers: Mapping[str, str],
    request_id: str,
    metered: bool,
) -> Call | Refused:
    """The request as `target` takes it: its model rewritten, built from validated parts (a
    stream asking for its usage chunk when tokens are counted or read, and the provider says
    so). `metered`: it holds a client's tpm reservation."""
    routing = edge.routing
    assert routing is not None
    way = routing.ways.get((target.label, asked.surface, asked.method, asked.path))
    if way is None:
        way = routing.way(target, asked.surface, asked.method, asked.path)
    if isinstance(way, Refused):
        return way
    body = asked.body
    if target.model != asked.model and asked.surface != "gemini":
        rewritten = rewrite_model(body, target.model, plain=asked.plain)
        if rewritten is None:
            return Refused(400, "invalid_request", "The body's `model` must be a string.")
        body = rewritten
    provider = way.provider
    return build_call(
        provider,
        asked.surface,
        way.match,
        way.entry,
        asked.method,
        way.path,
        asked.query,
        headers,
        body,
        asked.stream or way.match.route.stream,
        asked.options,
        request_id,
        edge.attempt_loop.tokens is not None or metered or provider.metered,
        peek_sec=route.peek_sec,
        max_attempts=route.attempts_per_target,
        client=asked.client,
        alias=route.alias if asked.configured else "-",
        metered=metered,
    )


def _failure(target: Target, reply: GatewayReply) -> Failure:
    """A target's failed reply in the plan's words: its reason (a pool or breaker refusal is
    `no_healthy_key`, a per-key or egress limit `rate_limited`) and the wait it named."""
    reason = reply.reason
    if reason not in _REASONS:
        limited = reason in _RATE_LIMITS or reason.startswith("key_limit_")
        reason = "rate_limited" if limited else NO_HEALTHY_KEY
    wait = reply.headers.get("retry-after")
    retry_after = float(wait) if wait is not None and wait.isdigit() else None
    return Failure(target, reason, reply.status, retry_after, called=reply.attempts > 0)
