"""The attempt loop: select a key → send → classify → answer or retry on another key.

It runs until the upstream's answer is known: its head, plus the whole body when the answer is
small and not streamed (read here and judged after the client has it), or the start of an error
body (to classify it). Relaying a streamed body is the edge's job (`api.py`), which then ends
the lease. Retries happen only before the first byte reaches the client, never twice on the
same key, inside one overall deadline and within the retry budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmgateway import providers
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.config.settings import ProviderSettings, RetryStep, StreamingMode
from llmgateway.core.guard import Closed, Excluded, Guard
from llmgateway.core.outcomes import Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import Lease, Unavailable
from llmgateway.core.resilience import RetryBudget, full_jitter_backoff
from llmgateway.limits import KeyLimiter, Refusal
from llmgateway.observe import debug, logs
from llmgateway.observe.metrics import Metrics
from llmgateway.observe.provider_metrics import Timing
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.catalog import Catalog
from llmgateway.providers.routes import Route, RouteTable, Surface, tables
from llmgateway.transport.errors import classify_exchange, is_transport_error
from llmgateway.transport.upstream import Answer, Upstream

ERROR_PREFIX_BYTES = 64 * 1024
"""How much of an upstream error body is read to classify it (and to pass it through)."""

# A lease given up because the client went away or the gateway cancelled: nobody is to blame.
CANCELLED = Outcome(reason=ErrorReason.UNKNOWN, blame=Blame.CLIENT)


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider instance as the gateway runs it: its settings, pool, resilience state, and
    what it serves (routes, models, forwarded headers), all built once at start."""

    name: str
    settings: ProviderSettings
    pool: KeyPool
    budget: RetryBudget
    guard: Guard
    limiter: KeyLimiter | None = None  # fleet-wide per-key limits, when the provider sets any
    routes: dict[Surface, RouteTable] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog(frozenset(), ()))
    forwarded: dict[Surface, frozenset[str]] = field(default_factory=dict)
    # the pool's key secrets, to scrub upstream error bodies with; learnt as keys join
    secrets: logs.Redactor = field(default_factory=logs.Redactor)
    # what the models lists show: the configured names, then the upstream's names a pattern
    # serves as the Keeper last fetched them (`list_models`)
    listed: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        name: str,
        settings: ProviderSettings,
        pool: KeyPool,
        budget: RetryBudget,
        guard: Guard,
        limiter: KeyLimiter | None = None,
    ) -> Provider:
        """A provider with its routes, model catalog and header allow-lists derived from
        `settings`."""
        routes = tables(settings)
        forwarded = {
            surface: wire_headers.allowed_names(settings.provider_type, surface)
            for surface in routes
        }
        catalog = Catalog.of(settings.models)
        provider = cls(name, settings, pool, budget, guard, limiter, routes, catalog, forwarded)
        provider.list_models([])
        return provider

    def list_models(self, upstream: list[str]) -> None:
        """Take the upstream's model names (as the Keeper last fetched them) into the models
        list, filtered once here rather than on every request for the list."""
        self.listed[:] = self.catalog.listed(upstream)


@dataclass(slots=True)  # not frozen: built for every request, and frozen inits cost more
class Call:
    """One client request, as the edge parsed it (the body is forwarded as raw bytes)."""

    provider: Provider
    api: providers.Api
    route: Route
    method: str
    path: str  # the validated raw path, forwarded as it is
    query: str  # the validated raw query, credentials removed
    headers: dict[str, str]  # the allow-listed client headers
    body: bytes
    model: str  # the configured model (name or pattern) serving the request: its scope
    stream: bool
    client_retry: bool
    timing: Timing = field(default_factory=Timing)


@dataclass(slots=True)
class Forward:
    """A successful upstream response for the edge to pass on: `body` when it was read whole
    (a small plain answer), else the edge streams it from `response`."""

    response: Answer
    lease: Lease
    attempts: int
    body: bytes | None = None


WHOLE_BODY_LIMIT = 1024 * 1024
"""A plain (not event-stream) answer up to this size is read whole before the client sees a
byte: one send instead of a stream, and an answer cut short is retried on another key."""


def _read_whole(call: Call, response: Answer) -> bool:
    if call.provider.settings.gateway_policy.streaming_mode is StreamingMode.DISABLED:
        return True
    length = response.content_length
    if length is None or length > WHOLE_BODY_LIMIT:
        return False
    return "text/event-stream" not in response.headers.get("content-type", "")


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer: an upstream client error passed through, or our own error."""

    status: int
    headers: dict[str, str]
    body: bytes
    attempts: int
    reason: str


@dataclass(slots=True)
class Conductor:
    """What the attempt loop needs, built once per gateway process."""

    upstream: Upstream
    writer: StatusWriter
    rng: random.Random
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics.create)
    max_response_bytes: int = 64 * 1024 * 1024  # a body read whole beyond it: ResponseTooLarge

    async def run(self, call: Call, deadline: float) -> Forward | Reply:
        """Serve `call` from the pool, retrying on other keys; `deadline` is loop time."""
        loop = asyncio.get_running_loop()
        policy = call.provider.settings.gateway_policy.retry
        budget = call.provider.budget
        excluded = Excluded(call.provider.guard, self.clock())
        tried = excluded.tried
        key_errors = server_errors = 0
        last: Reply | None = None
        limited: Refusal | None = None  # the soonest per-key limit refusal of this request
        # a client's own SDK retry takes a slot of the budget, and ours need one of their own
        if call.client_retry:
            budget.begin_client_retry()
        retrying = False
        try:
            while True:
                got = self._lease(call, excluded)
                if isinstance(got, Closed):
                    if got.reason == "circuit_open" or last is None:
                        return _closed(call, got, len(tried))
                    return last
                if isinstance(got, Unavailable):
                    if limited is not None:  # a key could serve, but not before then
                        return _limited(call, limited, len(tried))
                    return last if last is not None else _unavailable(call, got, len(tried))
                if call.provider.limiter is not None:
                    refused = await self._limit(call, call.provider.limiter, got, excluded)
                    if refused is not None:  # at its limit across the fleet: try the next key
                        if limited is None or refused.retry_after < limited.retry_after:
                            limited = refused
                        continue
                tried.add(got.key_id)
                result = await self._attempt(call, got, deadline, len(tried))
                if isinstance(result, Forward):
                    return result
                reply, outcome = result
                if outcome.blame is Blame.CLIENT:
                    return reply
                if outcome.blame is Blame.EGRESS:  # not this way again within this request
                    excluded.egresses.add(got.egress)
                last = reply
                if outcome.blame is Blame.KEY:
                    key_errors += 1
                    step, used = policy.on_key_error, key_errors
                else:
                    server_errors += 1
                    step, used = policy.on_server_error, server_errors
                if not policy.enabled or used > step.attempts:
                    return reply
                pause = _backoff(step, used, self.rng)
                connect = call.provider.settings.timeouts.connect
                if outcome.blame is not Blame.KEY and outcome.retry_after is not None:
                    # the provider asked for a pause: honour it only when it fits the deadline
                    asked = max(pause, outcome.retry_after)
                    if loop.time() + asked + connect < deadline:
                        pause = asked
                # a retry that cannot even connect before the deadline is not started
                if loop.time() + pause + connect >= deadline:
                    return reply
                if not retrying:
                    if not budget.try_begin_retry():
                        return reply
                    retrying = True
                self.metrics.for_provider(call.provider.name).retry(outcome)
                if pause > 0:
                    await asyncio.sleep(pause)
        finally:
            if retrying:
                budget.end_retry()
            if call.client_retry:
                budget.end_retry()

    def _lease(self, call: Call, excluded: Excluded) -> Lease | Unavailable | Closed:
        """A key whose provider and egress are open, or why there is none."""
        guard, pool = call.provider.guard, call.provider.pool
        now = excluded.now = self.clock()
        closed = guard.admit(now)
        if closed is not None:
            return closed
        blocked: Closed | None = None
        while True:
            got = pool.acquire(call.model, now, excluded)
            if isinstance(got, Unavailable):
                guard.forget(None, now)
                return blocked if blocked is not None else got
            guard.note(got.key_id, got.egress)
            if got.egress in excluded.egresses:
                shut: Closed | None = Closed("egress_open", 1.0)
            else:
                shut = guard.egress_closed(got.egress, now)
            if shut is None:
                return got
            pool.release(got, CANCELLED, now)
            excluded.skipped.add(got.key_id)
            if blocked is None or shut.retry_after < blocked.retry_after:
                blocked = shut

    async def _attempt(
        self, call: Call, lease: Lease, deadline: float, attempt: int
    ) -> Forward | tuple[Reply, Outcome]:
        provider = call.provider
        settings = provider.settings
        status: int | None = None
        response: Answer | None = None
        body = b""
        exc: Exception | None = None
        sent = time.perf_counter()
        try:
            url = providers.upstream_url(settings, call.api, call.path, call.query)
            name, value = providers.auth_header(settings, call.api, lease.secret)
            headers = dict(call.headers)
            headers[name] = value
            logs.bind_attempt(lease.secret, attempt)
            mode = settings.gateway_policy.debug_mode
            debug.request(mode, call.method, url, headers, call.body, lease.secret)
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError
            response = await self.upstream.request(
                lease.egress, call.method, url, headers, call.body, settings.timeouts, deadline
            )
            status = response.status
            if status < 300:
                if _read_whole(call, response):  # judged once the client has it (`finish`)
                    whole = await response.read(self.max_response_bytes)
                    return Forward(response, lease, attempt, whole)
                ok = _success(status)
                provider.guard.judge(lease.egress, lease.key_id, ok, self.clock())
                self._observed(call, lease, ok, response.headers, None)
                return Forward(response, lease, attempt)
            body = await response.read_prefix(ERROR_PREFIX_BYTES)
        except Exception as error:
            if not is_transport_error(error):  # our own bug: nobody else's fault
                self._abandon(provider, lease, response)
                raise
            exc = error  # classified below; none escapes to the client
        except BaseException:  # cancelled: the client left, or the gateway is stopping
            self._abandon(provider, lease, response)
            raise
        finally:
            call.timing.waited(sent)
            # not forwarded: an error answer, or a body read whole that failed (over the limit)
            if response is not None and (status is None or status >= 300 or exc is not None):
                response.close()
        outcome = classify_exchange(
            settings,
            status,
            response.headers if response is not None else {},
            body,
            exc,
            key_route=call.route.builtin,
            now=self.clock(),
        )
        learnt = provider.guard.judge(lease.egress, lease.key_id, outcome, self.clock())
        self._observed(call, lease, outcome, response.headers if response else {}, body)
        self._release(provider, lease, learnt)
        return _reply(call, status, response, body, outcome, attempt), outcome

    def _abandon(self, provider: Provider, lease: Lease, response: Answer | None) -> None:
        """An attempt that ended without an outcome: the lease and the guard's admission are
        given back, and nothing is learnt about the key."""
        provider.guard.forget(lease.egress, self.clock())
        self._release(provider, lease, CANCELLED)
        if response is not None:
            response.close()

    async def _limit(
        self, call: Call, limiter: KeyLimiter, lease: Lease, excluded: Excluded
    ) -> Refusal | None:
        """Ask the per-key limits for `lease`; a refused key goes back to the pool and is not
        offered again within this request."""
        refused: Refusal | None = Refusal("busy", 0.0)  # cancelled while asking: put it back
        try:
            refused = await limiter.acquire(lease)
        finally:
            if refused is not None:
                now = self.clock()
                call.provider.guard.forget(lease.egress, now)
                call.provider.pool.release(lease, CANCELLED, now)
                excluded.skipped.add(lease.key_id)
        return refused

    def _release(self, provider: Provider, lease: Lease, outcome: Outcome) -> None:
        if provider.limiter is not None:
            provider.limiter.release(lease)
        change = provider.pool.release(lease, outcome, self.clock())
        if change is not None:
            if change.status is not KeyStatus.VALID:
                reason = change.reason.value if change.reason else change.status.value
                self.metrics.for_provider(provider.name).cooldown(reason)
            self.writer.offer(provider.name, change, self.clock())

    def _observed(
        self,
        call: Call,
        lease: Lease,
        outcome: Outcome,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> None:
        """Account for one attempt: its metric, the log context, the debug log."""
        self.metrics.for_provider(call.provider.name).attempt(outcome)
        logs.bind_outcome(outcome)
        mode = call.provider.settings.gateway_policy.debug_mode
        debug.response(mode, outcome.status, headers, body, lease.secret)

    def finish(self, call: Call, forward: Forward, outcome: Outcome) -> None:
        """Release the key of a forwarded answer once the client has it (or the stream failed
        or was cut). An answer read whole is judged only now, off the request's path."""
        lease, guard = forward.lease, call.provider.guard
        if forward.body is not None:
            ok = _success(forward.response.status)
            guard.judge(lease.egress, lease.key_id, ok, self.clock())
            self._observed(call, lease, ok, forward.response.headers, None)
        learnt = guard.judge_end(lease.egress, outcome)
        self._release(call.provider, lease, learnt)


_SUCCESSES = {
    status: Outcome(reason=None, blame=Blame.NONE, status=status) for status in range(300)
}


def _success(status: int) -> Outcome:
    """The outcome of an answer below 300 (from a table: one fewer object per request)."""
    return _SUCCESSES[status]


def _backoff(step: RetryStep, attempt: int, rng: random.Random) -> float:
    cap = step.backoff_sec * step.backoff_factor ** max(attempt - 1, 0)
    return full_jitter_backoff(attempt - 1, step.backoff_sec, step.backoff_factor, cap, rng)


_PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms")


def _reply(
    call: Call,
    status: int | None,
    response: Answer | None,
    body: bytes,
    outcome: Outcome,
    attempts: int,
) -> Reply:
    """What the client sees if this failed attempt turns out to be the last one."""
    reason = outcome.reason.value if outcome.reason else "ok"
    if outcome.reason is ErrorReason.FORBIDDEN:  # its body may describe the key's account
        message = "The provider refused access to something this request names."
        return _error(call, 403, message, "forbidden", None, attempts, reason)
    if outcome.blame is Blame.CLIENT and status is not None and response is not None:
        return _passed(call, status, response, body, attempts, reason)
    if outcome.reason is ErrorReason.BAD_REQUEST:  # the HTTP seam refused to send it
        message = "The request cannot be sent upstream as it is (a header or the target)."
        return _error(call, 400, message, "invalid_request", None, attempts, reason)
    if outcome.blame is Blame.KEY:
        if outcome.reason in (ErrorReason.RATE_LIMITED, ErrorReason.NO_QUOTA):
            wait = outcome.retry_after if outcome.retry_after is not None else 1.0
            message = "Every usable key of this provider is rate-limited or out of quota."
            return _error(call, 429, message, "rate_limit_exceeded", wait, attempts, reason)
        message = "No working key is available for this provider right now."
        return _error(call, 503, message, "no_healthy_key", 5.0, attempts, reason)
    if status is not None and response is not None and status >= 500:
        return _passed(call, status, response, body, attempts, reason)
    if outcome.reason is ErrorReason.SERVER_ERROR:  # not a valid answer: nothing to pass on
        message = "The upstream's answer was not valid HTTP, or larger than the gateway allows."
        return _error(call, 502, message, "bad_upstream_response", None, attempts, reason)
    if outcome.reason is ErrorReason.TIMEOUT:
        return _error(
            call, 504, "The upstream did not answer in time.", "timeout", None, attempts, reason
        )
    message = "The upstream could not be reached."
    return _error(call, 502, message, "upstream_unreachable", None, attempts, reason)


def _passed(
    call: Call, status: int, response: Answer, body: bytes, attempts: int, reason: str
) -> Reply:
    """An upstream error answer passed on to the client, scrubbed of any pool key (a hostile
    or careless upstream may echo the request it got)."""
    headers = {k: response.headers[k] for k in _PASS_HEADERS if k in response.headers}
    return Reply(status, headers, call.provider.secrets.scrub(body), attempts, reason)


def _closed(call: Call, why: Closed, attempts: int) -> Reply:
    """Fail fast: the provider's breaker is open, or every way out is closed."""
    if why.reason == "egress_rate_limited":
        message = "This provider rate-limits the gateway's address; retry after the indicated time."
        return _error(
            call, 429, message, "rate_limit_exceeded", why.retry_after, attempts, why.reason
        )
    if why.reason == "circuit_open":
        message = "This provider is failing; the gateway's circuit breaker is open for it."
    else:
        message = "The gateway cannot reach this provider through any working egress right now."
    return _error(call, 503, message, why.reason, why.retry_after, attempts, why.reason)


def _unavailable(call: Call, why: Unavailable, attempts: int) -> Reply:
    if why.reason == "rate_limited":
        wait = why.retry_after if why.retry_after is not None else 1.0
        message = "Every key of this provider is rate-limited; retry after the indicated time."
        return _error(call, 429, message, "rate_limit_exceeded", wait, attempts, "rate_limited")
    wait = why.retry_after if why.retry_after is not None else 5.0
    message = "No healthy key is available for this provider right now."
    return _error(call, 503, message, "no_healthy_key", wait, attempts, "no_keys")


def _limited(call: Call, why: Refusal, attempts: int) -> Reply:
    """Every key the pool offered is at its per-key limit (max_concurrent or rpm)."""
    message = "Every usable key of this provider is at its per-key limit; retry later."
    code = "rate_limit_exceeded"
    return _error(call, 429, message, code, why.retry_after, attempts, f"key_limit_{why.reason}")


def _error(
    call: Call,
    status: int,
    message: str,
    code: str,
    retry_after: float | None,
    attempts: int,
    reason: str,
) -> Reply:
    headers = {"content-type": "application/json"}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    body = providers.error_body(call.api, status, message, code=code)
    return Reply(status, headers, body, attempts, reason)
