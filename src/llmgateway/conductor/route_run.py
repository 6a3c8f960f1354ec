"""The way of one request made with a gateway token along its route: the targets of the
route's plan asked in turn (`core.route_plan`), each with the attempt loop's key-level retries,
until one answers, a failure is not one to fall back from, or the plan, the deadline or the
retry budget runs out (then `exhausted` says the answer).

A target is asked only while it has a key it may use now (`Routing.eligible`: O(1) from the
pool's bag and the provider's breaker, no key looked at). A move to another target takes a slot
of that provider's retry budget and must fit the request's deadline. Only the model is
rewritten: the body's top-level `model` (`core.model_rewrite`), or the model segment of a
Gemini native path.
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
    Named,
    Refused,
    resolve,
)
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.call import Call, Provider
from llmgateway.conductor.claim import CANCELLED, Claim
from llmgateway.conductor.client_gate import Hold, Spend
from llmgateway.conductor.edge import ON_DISCONNECT, ClientWatch
from llmgateway.conductor.replies import GatewayReply
from llmgateway.conductor.responses import INTERNAL, JSON, Extra, deliver, send_refusal, send_whole
from llmgateway.conductor.route_state import Routing
from llmgateway.conductor.usage_ask import ask_usage
from llmgateway.core.model_rewrite import rewrite_model
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.route_plan import NO_HEALTHY_KEY, Failure, Step, exhausted, next_step, plan
from llmgateway.core.routes import (
    Route,
    StreamCommit,
    Surface,
    Target,
)
from llmgateway.observe import logs
from llmgateway.observe.access import AccessLog
from llmgateway.observe.provider_metrics import Timing
from llmgateway.observe.route_metrics import NO_TARGET
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.routes import Match

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
    the OpenAI surface), its body and whether it streams."""

    surface: Surface
    method: str
    path: str
    query: str
    model: str
    verb: str
    body: bytes
    stream: bool
    plain: bool  # the body names `model` once, with no `\\u` escape (`rewrite_model`'s)
    options: bool = False  # the body sets `stream_options` (`usage_ask`)
    client: str = "-"  # the gateway token's name


NOT_SERVED = Refused(
    404,
    "not_found",
    "A gateway token serves POST /v1/… with the model in the body (POST /v1/messages on "
    "the Anthropic surface), and POST /v1beta/models/{model}:{method} (or /v1/) on the "
    "Gemini surface.",
)


_ANSWERED = "answered"  # the target's answer went to the client
_NOT_STARTED = "not_started"  # no time or no retry budget left for another target


@dataclass(slots=True)
class Run:
    """One request's way along its route's plan (and its context-length aliases)."""

    edge: Serving
    routing: Routing
    asked: Asked
    scope: Scope
    send: Send
    headers: Mapping[str, str]
    request_id: str
    started: float
    configured: bool
    failures: list[Failure] = field(default_factory=list)
    unserved: list[Refused] = field(default_factory=list)  # targets that cannot take it
    attempts: int = 0
    deadline: float | None = None
    target: Target | None = None  # the last target asked
    reply: GatewayReply | None = None  # the last reply of a target that called upstream
    code: int = 499
    ended: str = "client_gone"
    hold: Hold | None = None  # the client's slot (`conductor.client_gate`), given back at the end
    spend: Spend | None = None  # the client's tpm reservation, settled at the end
    answer: Call | None = None  # the call whose answer is relayed (its usage settles `spend`)
    tried: list[Target] = field(init=False)  # the targets the current plan asked
    skipped: list[Target] = field(init=False)  # and the ones it left out (set by `_plan`)

    async def serve(self, route: Route) -> None:
        """Serve the request along `route`'s plan (then its context-length aliases, and so
        on), answering the client whatever happens; the body's share of the in-flight budget
        is given back at the end.

        The targets are asked from here rather than from a helper coroutine: each level of
        awaits between the edge and the attempt loop is run again every time the request's
        task wakes up (a dozen times for a streamed answer)."""
        task = asyncio.current_task()
        assert task is not None
        watch = ClientWatch(task)
        self.scope[ON_DISCONNECT] = watch.client_left
        outcome = "client_gone"
        try:
            current, hops = route, 0
            targets = self._plan(current)
            target = next(targets, None)
            while target is not None:
                self.tried.append(target)
                got = await self._asked(current, target)
                if got == _ANSWERED:
                    outcome = "ok"
                    return
                then = self._then(current, target, got, targets)
                if isinstance(then, GatewayReply):
                    await self._send(current, then)
                    outcome = "error"
                    return
                if isinstance(then, Route):
                    if hops == MAX_HOPS:
                        break
                    current, hops = then, hops + 1
                    targets = self._plan(current)
                    then = next(targets, None)
                target = then
            outcome = await self._exhausted(current)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()
            log.info("client disconnected", extra={"request_id": self.request_id})
        finally:
            self.scope[ON_DISCONNECT] = None  # from here on nothing may cancel the task
            self.edge.bodies.give(len(self.asked.body))
            if self.hold is not None:
                self.routing.clients.release(self.hold)
            if self.spend is not None:
                used = self.answer.used if self.answer is not None else 0
                self.routing.clients.spent(self.spend, used)
            if self.configured:
                self.edge.attempt_loop.metrics.routes.request(route.alias, outcome)
            self.edge.access.done(self.scope, self.code, self.attempts, self.ended, self.started)

    def _plan(self, route: Route) -> Iterator[Target]:
        """`route`'s plan, drawn as the request goes; what it skips is kept for `_exhausted`."""
        self.tried, self.skipped = [], []
        return plan(route, self.routing.eligible, self.routing.rng, self.skipped)

    def _then(
        self,
        route: Route,
        target: Target,
        got: GatewayReply | Refused | str,
        targets: Iterator[Target],
    ) -> Target | Route | GatewayReply | None:
        """What follows a target that did not answer: the next target of the plan, the
        route's context-length alias, a reply to send as the answer, or None (exhausted: the
        plan ran out, or no time or retry budget was left to start another target)."""
        if got == _NOT_STARTED:
            return None
        if isinstance(got, Refused):  # the target cannot serve this path or method
            self.failures.append(Failure(target, NO_HEALTHY_KEY, called=False))
            self.unserved.append(got)
            return next(targets, None)
        assert isinstance(got, GatewayReply)
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
        """One target: its key-level attempts, and its answer relayed when it has one (or
        why the target cannot take the request at all)."""
        provider = self.routing.providers[target.provider]
        metered = self.spend is not None
        ask = self.edge.attempt_loop.tokens is not None or metered or provider.metered
        call = _call(route, provider, target, self.asked, self.headers, self.request_id, ask)
        if isinstance(call, Refused):
            return call
        call.metered = metered
        if self.configured:
            call.alias = route.alias
        now = asyncio.get_running_loop().time()
        timeouts = provider.settings.timeouts
        if self.deadline is None:
            self.deadline = now + timeouts.total
        elif now + timeouts.connect >= self.deadline:
            return _NOT_STARTED
        claim = Claim(call, self.edge.attempt_loop)
        if self.target is not None and not claim.may_retry():  # a fallback is a retry
            claim.end(CANCELLED)
            return _NOT_STARTED
        self.target = target
        call.timing = Timing(self.started)
        logs.bind_provider(provider.name, call.model)
        bound = self.edge.attempt_loop.metrics.for_provider(provider.name)
        bound.started()
        code, outcome = 499, CANCELLED
        try:
            result = await self.edge.attempt_loop.run(call, claim, self.deadline)
            self.attempts += result.attempts
            if isinstance(result, GatewayReply):
                code = result.status
                return result
            self.answer = call
            shown = self._shown(route, target)
            loop = self.edge.attempt_loop
            args = (self.send, self.request_id, self.deadline, shown)
            sent = await deliver(call, result, *args, tokens=loop.tokens)
            code, _, self.ended, outcome = sent
            self.code = code
            return _ANSWERED
        except Exception:  # our own bug: logged, answered, blamed on nobody
            log.exception("internal error while serving the request")
            code = self.code = 500
            self.ended = "internal_error"
            await send_refusal(self.send, self.asked.surface, INTERNAL, self.request_id)
            return _ANSWERED
        finally:
            claim.end(outcome)
            bound.finished(call.model, code, call.timing)

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
        if self.configured:
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
        if self.configured:
            source = left.label if left is not None else NO_TARGET
            fallbacks = self.edge.attempt_loop.metrics.routes.fallbacks
            fallbacks.labels(route.alias, source, to, reason).inc()

    def _shown(self, route: Route, target: Target | None) -> Extra:
        """The `x-llmgateway-*` headers, when the route shows them."""
        if not route.headers:
            return ()
        alias, label = self.routing.shown(route.alias, target.label if target else NO_TARGET)
        return (
            (b"x-llmgateway-route", alias),
            (b"x-llmgateway-target", label),
            (b"x-llmgateway-attempts", b"%d" % self.attempts),
        )


def _call(
    route: Route,
    provider: Provider,
    target: Target,
    asked: Asked,
    headers: Mapping[str, str],
    request_id: str,
    ask_usage_chunk: bool,
) -> Call | Refused:
    """The request as `target` takes it: its model rewritten, built from validated parts (a
    stream asking for its usage chunk where `ask_usage_chunk` and the provider say so)."""
    table = provider.routes.get(asked.surface)
    if table is None:
        return NOT_SERVED
    if asked.surface == "gemini":
        prefix = asked.path[: asked.path.index("/models/") + len("/models/")]
        path, body = f"{prefix}{target.model}:{asked.verb}", asked.body
    elif target.model == asked.model:  # an alias named after its target's model
        path, body = asked.path, asked.body
    else:
        path = asked.path
        rewritten = rewrite_model(asked.body, target.model, plain=asked.plain)
        if rewritten is None:
            return Refused(400, "invalid_request", "The body's `model` must be a string.")
        body = rewritten
    match: Match | None = table.match(asked.method, path)
    if match is None:
        return NOT_SERVED
    stream = asked.stream or match.route.stream
    named = Named(target.model, stream)
    entry = resolve(provider.catalog, match, named, provider.settings.default_model)
    if isinstance(entry, Refused):
        return entry
    first_event = route.stream_commit is StreamCommit.FIRST_EVENT
    call = Call(
        provider=provider,
        api=asked.surface,
        route=match.route,
        method=asked.method,
        path=path,
        query=asked.query,
        headers=wire_headers.forwarded(provider.forwarded[asked.surface], headers, request_id),
        body=body,
        model=entry,
        stream=stream,
        client_retry=headers.get("x-stainless-retry-count", "0") not in ("0", ""),
        peek_sec=route.peek_timeout_sec if first_event else None,
        max_attempts=route.attempts_per_target,
        client=asked.client,
    )
    if ask_usage_chunk:
        ask_usage(call, asked.options)
    return call


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
