"""The attempt loop: select a key → send → classify → answer or retry on another key.

It runs only until the upstream's response headers arrive; streaming the body is the edge's job
(`api.py`), which then releases the lease. Retries happen only before the first byte reaches
the client, never twice on the same key, inside one overall deadline and within the retry budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from llmgateway import providers
from llmgateway.events import StatusWriter
from llmgateway.outcomes import Blame, ErrorReason, Outcome, classify
from llmgateway.pool import KeyPool, Lease, Unavailable
from llmgateway.resilience import RetryBudget, full_jitter_backoff
from llmgateway.settings import ProviderSettings, RetryStep
from llmgateway.upstream import Upstream

ERROR_PREFIX_BYTES = 64 * 1024
"""How much of an upstream error body is read to classify it (and to pass it through)."""

# A lease given up because the client went away or the gateway cancelled: nobody is to blame.
CANCELLED = Outcome(reason=ErrorReason.UNKNOWN, blame=Blame.CLIENT)


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider instance as the gateway runs it: its settings, pool and HTTP timeouts."""

    name: str
    settings: ProviderSettings
    pool: KeyPool
    timeout: aiohttp.ClientTimeout
    budget: RetryBudget


@dataclass(frozen=True, slots=True)
class Call:
    """One client request, as the edge parsed it (the body is forwarded as raw bytes)."""

    provider: Provider
    api: providers.Api
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    model: str
    stream: bool
    client_retry: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """A successful upstream response whose body the edge streams to the client."""

    response: aiohttp.ClientResponse
    lease: Lease
    attempts: int


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

    async def run(self, call: Call, deadline: float) -> Forward | Reply:
        """Serve `call` from the pool, retrying on other keys; `deadline` is loop time."""
        loop = asyncio.get_running_loop()
        pool = call.provider.pool
        policy = call.provider.settings.gateway_policy.retry
        budget = call.provider.budget
        tried: set[int] = set()
        key_errors = server_errors = 0
        last: Reply | None = None
        retrying = call.client_retry  # a client's own SDK retry counts against the budget
        if retrying:
            budget.begin_client_retry()
        try:
            while True:
                got = pool.acquire(call.model, self.clock(), tried)
                if isinstance(got, Unavailable):
                    return last if last is not None else _unavailable(call, got, len(tried))
                tried.add(got.key_id)
                result = await self._attempt(call, got, deadline - loop.time(), len(tried))
                if isinstance(result, Forward):
                    return result
                reply, outcome = result
                if outcome.blame is Blame.CLIENT:
                    return reply
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
                # a retry that cannot even connect before the deadline is not started
                if loop.time() + pause + call.provider.settings.timeouts.connect >= deadline:
                    return reply
                if not retrying:
                    if not budget.try_begin_retry():
                        return reply
                    retrying = True
                if pause > 0:
                    await asyncio.sleep(pause)
        finally:
            if retrying:
                budget.end_retry()

    async def _attempt(
        self, call: Call, lease: Lease, remaining: float, attempt: int
    ) -> Forward | tuple[Reply, Outcome]:
        provider = call.provider
        settings = provider.settings
        url = providers.upstream_url(settings, call.api, call.path, call.query)
        name, value = providers.auth_header(settings, call.api, lease.secret)
        headers = dict(call.headers)
        headers[name] = value
        status: int | None = None
        response: aiohttp.ClientResponse | None = None
        body = b""
        exc: BaseException | None = None
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                response = await self.upstream.session(lease.egress).request(
                    call.method,
                    url,
                    headers=headers,
                    data=call.body or None,
                    proxy=Upstream.proxy_url(lease.egress),
                    timeout=provider.timeout,
                    allow_redirects=False,
                )
                status = response.status
                if status < 300:
                    return Forward(response, lease, attempt)
                body = await response.content.read(ERROR_PREFIX_BYTES)
        except asyncio.CancelledError:
            self._release(provider, lease, CANCELLED)
            if response is not None:
                response.close()
            raise
        except Exception as error:  # every failure is classified, none escapes to the client
            exc = error
        finally:
            if response is not None and (status is None or status >= 300):
                response.release()
        outcome = classify(
            settings,
            status,
            response.headers if response is not None else {},
            body,
            exc,
            now=self.clock(),
        )
        self._release(provider, lease, outcome)
        return _reply(call, status, response, body, outcome, attempt), outcome

    def _release(self, provider: Provider, lease: Lease, outcome: Outcome) -> None:
        change = provider.pool.release(lease, outcome, self.clock())
        if change is not None:
            self.writer.offer(provider.name, change, self.clock())

    def finish(self, call: Call, forward: Forward, outcome: Outcome) -> None:
        """Release the key of a streamed answer once its body ended (or failed, or was cut)."""
        self._release(call.provider, forward.lease, outcome)


def _backoff(step: RetryStep, attempt: int, rng: random.Random) -> float:
    cap = step.backoff_sec * step.backoff_factor ** max(attempt - 1, 0)
    return full_jitter_backoff(attempt - 1, step.backoff_sec, step.backoff_factor, cap, rng)


_PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms")


def _reply(
    call: Call,
    status: int | None,
    response: aiohttp.ClientResponse | None,
    body: bytes,
    outcome: Outcome,
    attempts: int,
) -> Reply:
    """What the client sees if this failed attempt turns out to be the last one."""
    reason = outcome.reason.value if outcome.reason else "ok"
    if outcome.blame is Blame.CLIENT and status is not None and response is not None:
        headers = {k: response.headers[k] for k in _PASS_HEADERS if k in response.headers}
        return Reply(status, headers, body, attempts, reason)
    if outcome.blame is Blame.KEY:
        if outcome.reason in (ErrorReason.RATE_LIMITED, ErrorReason.NO_QUOTA):
            wait = outcome.retry_after if outcome.retry_after is not None else 1.0
            message = "Every usable key of this provider is rate-limited or out of quota."
            return _error(call, 429, message, "rate_limit_exceeded", wait, attempts, reason)
        message = "No working key is available for this provider right now."
        return _error(call, 503, message, "no_healthy_key", 5.0, attempts, reason)
    if status is not None and response is not None and status >= 500:
        headers = {k: response.headers[k] for k in _PASS_HEADERS if k in response.headers}
        return Reply(status, headers, body, attempts, reason)
    if outcome.reason is ErrorReason.TIMEOUT:
        return _error(
            call, 504, "The upstream did not answer in time.", "timeout", None, attempts, reason
        )
    message = "The upstream could not be reached."
    return _error(call, 502, message, "upstream_unreachable", None, attempts, reason)


def _unavailable(call: Call, why: Unavailable, attempts: int) -> Reply:
    if why.reason == "rate_limited":
        wait = why.retry_after if why.retry_after is not None else 1.0
        message = "Every key of this provider is rate-limited; retry after the indicated time."
        return _error(call, 429, message, "rate_limit_exceeded", wait, attempts, "rate_limited")
    wait = why.retry_after if why.retry_after is not None else 5.0
    message = "No healthy key is available for this provider right now."
    return _error(call, 503, message, "no_healthy_key", wait, attempts, "no_keys")


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
