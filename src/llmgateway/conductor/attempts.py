"""The attempt loop: select a key → send → classify → answer or retry on another key.

It runs until the upstream's answer is known: its head, plus the whole body when the answer is
small and not streamed (read here, `WHOLE_BODY_LIMIT`, and judged once the client has it), or
the start of an error body (to classify it). Relaying the answer to the client is the edge's job
(`endpoints.py`), which then ends the request's `Claim`: everything an attempt takes (lease,
guard admission, retry-budget slot, response) is held and given back by that claim. Retries
happen only before the first byte reaches the client, never twice on the same key, inside one
overall deadline and within the retry budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmgateway import providers
from llmgateway.conductor.call import Call
from llmgateway.conductor.claim import Claim
from llmgateway.conductor.replies import GatewayReply, failed_attempt, no_key, stream_failed
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.conductor.stream_peek import is_event_stream, peek
from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.conductor.usage_writer import UsageWriter
from llmgateway.config.settings import RetryStep
from llmgateway.core.guard import Excluded
from llmgateway.core.outcomes import Blame, Outcome
from llmgateway.core.pool_keys import Lease
from llmgateway.core.resilience import full_jitter_backoff
from llmgateway.core.stream_commit import Decision, Peek, outcome_of_peek
from llmgateway.limits import Refusal
from llmgateway.limits.reservation import reservation
from llmgateway.observe import debug, logs
from llmgateway.observe.metrics import Metrics
from llmgateway.transport.errors import classify_exchange, is_transport_error
from llmgateway.transport.upstream import Upstream, UpstreamResponse

ERROR_PREFIX_BYTES = 64 * 1024
"""How much of an upstream error body is read to classify it (and to pass it through)."""


@dataclass(slots=True)
class Relay:
    """A successful upstream response for the edge to relay to the client: `body` when it was
    read whole (a small plain answer), else the edge streams it from `response`. The request's
    `Claim` holds the response and its key, and closes and releases them when the relay ends."""

    response: UpstreamResponse
    attempts: int
    secret: str = field(repr=False)  # the key it came through, for the debug log only
    body: bytes | None = None
    held: bytes = b""  # a peeked stream's first bytes, sent before the rest (`peek`)
    key_id: int = -1  # the key it came through (the token counts)


WHOLE_BODY_LIMIT = 1024 * 1024
"""A plain (not event-stream) answer up to this size is read whole before the client sees a
byte: one send instead of a stream, and an answer cut short is retried on another key."""


def _read_whole(response: UpstreamResponse) -> bool:
    """Is the answer small and plain? Streams and larger answers are relayed as they come,
    whatever `streaming_mode` says: the original streamed every answer too (`disabled` only
    made it read the request body, which this gateway always does)."""
    length = response.content_length
    if length is None or length > WHOLE_BODY_LIMIT:
        return False
    return "text/event-stream" not in response.headers.get("content-type", "")


@dataclass(slots=True)
class AttemptLoop:
    """The attempt loop (see the module docstring): what it needs, built once per gateway
    process."""

    upstream: Upstream
    writer: StatusWriter
    rng: random.Random
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics.create)
    max_response_bytes: int = 64 * 1024 * 1024  # a body read whole beyond it: ResponseTooLarge
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the pause before a retry
    usage: UsageWriter | None = None  # the hourly counts per key (None: not counted)
    tokens: TokenWriter | None = None  # the hourly token counts (None: not counted)

    async def run(self, call: Call, claim: Claim, deadline: float) -> Relay | GatewayReply:
        """Serve `call` from the pool, retrying on other keys; `deadline` is loop time. What
        it takes is held by `claim`, which the caller ends once the request is over."""
        limiter = call.provider.limiter
        excluded = Excluded(call.provider.guard, self.clock())
        tried = excluded.tried
        key_errors = 0
        last: GatewayReply | None = None
        limited: Refusal | None = None  # the soonest per-key limit refusal of this request
        # the tokens each key reserves against its tpm (settled when its lease is released)
        amount = reservation(call.body) if limiter is not None and limiter.metered else 0
        try:
            while True:
                got = claim.take(excluded)
                if not isinstance(got, Lease):
                    return no_key(call, got, last, limited, len(tried))
                if limiter is not None:
                    refused = await limiter.acquire(got, amount)
                    if refused is not None:  # at its limit across the fleet: try the next key
                        claim.put_back(excluded)
                        limited = _sooner(limited, refused)
                        continue
                tried.add(got.key_id)
                result = await self._attempt(call, claim, got, deadline, len(tried))
                if isinstance(result, Relay):
                    return result
                last, outcome = result
                if outcome.blame is Blame.EGRESS:  # not this way again within this request
                    excluded.egresses.add(got.egress)
                key_errors += outcome.blame is Blame.KEY
                pause = self._pause(call, claim, outcome, key_errors, len(tried), deadline)
                if pause is None:
                    return last
                self.metrics.for_provider(call.provider.name).retry(outcome)
                if pause > 0:
                    await self.sleep(pause)
        finally:
            claim.retries_over()

    def _pause(
        self,
        call: Call,
        claim: Claim,
        outcome: Outcome,
        key_errors: int,
        attempts: int,
        deadline: float,
    ) -> float | None:
        """How long to wait before retrying after a failed attempt, or None: no retry (the
        client's fault, the policy's attempts used up, the deadline too near, or no room in
        the retry budget). Of the `attempts` failed so far, `key_errors` were the key's fault
        (`on_key_error`); the others count against `on_server_error`. A step's `attempts`
        counts tries, as the original's did: `attempts: 3` is at most 3 tries that fail in
        that class (so 2 retries); 0 and 1 both mean the first such failure is answered."""
        if outcome.blame is Blame.CLIENT:
            return None
        policy = call.provider.settings.gateway_policy.retry
        if outcome.blame is Blame.KEY:
            step, used = policy.on_key_error, key_errors
        else:
            step, used = policy.on_server_error, attempts - key_errors
        if not policy.enabled or used >= step.attempts:
            return None
        if call.max_attempts is not None and attempts >= call.max_attempts:
            return None
        pause = _backoff(step, used, self.rng)
        connect = call.provider.settings.timeouts.connect
        loop = asyncio.get_running_loop()
        if outcome.blame is not Blame.KEY and outcome.retry_after is not None:
            # the provider asked for a pause: honour it only when it fits the deadline
            asked = max(pause, outcome.retry_after)
            if loop.time() + asked + connect < deadline:
                pause = asked
        # a retry that cannot even connect before the deadline is not started
        if loop.time() + pause + connect >= deadline or not claim.may_retry():
            return None
        return pause

    async def _attempt(
        self, call: Call, claim: Claim, lease: Lease, deadline: float, attempt: int
    ) -> Relay | tuple[GatewayReply, Outcome]:
        """One attempt on `lease`: the answer to relay, or the failed attempt's reply and
        outcome (settled: judged and released). An exception that is not the wire's (our own
        bug) or a cancellation leaves the attempt to the claim's end."""
        settings = call.provider.settings
        status: int | None = None
        response: UpstreamResponse | None = None
        body = b""
        exc: Exception | None = None
        sent = time.perf_counter()
        try:
            url = providers.upstream_url(settings, call.api, call.path, call.query)
            headers = providers.upstream_headers(settings, call.api, call.headers, lease.secret)
            logs.bind_attempt(lease.secret, attempt)
            mode = settings.gateway_policy.debug_mode
            debug.request(mode, call.method, url, headers, call.body, lease.secret)
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError
            response = claim.response = await self.upstream.request(
                lease.egress, call.method, url, headers, call.body, settings.timeouts, deadline
            )
            status = response.status
            if status < 300:
                ok = _success(status)
                if _read_whole(response):  # judged once the client has it
                    whole = await response.read(self.max_response_bytes)
                    claim.relay(ok, whole=True)
                    return Relay(response, attempt, lease.secret, whole, key_id=lease.key_id)
                held = b""
                if call.peek_sec is not None and is_event_stream(response):
                    left = deadline - asyncio.get_running_loop().time()
                    peeked = await peek(
                        response, min(call.peek_sec, left), last=call.peek_sec >= left
                    )
                    failed = self._failed_peek(call, claim, peeked, attempt)
                    if failed is not None:
                        return failed
                    held = peeked.held
                claim.relay(ok, whole=False)
                claim.observed(ok, response.headers, None)
                return Relay(response, attempt, lease.secret, held=held, key_id=lease.key_id)
            body = await response.read_prefix(ERROR_PREFIX_BYTES)
        except Exception as error:
            if not is_transport_error(error):  # our own bug: nobody else's fault
                raise
            exc = error  # classified below; none escapes to the client
        finally:
            call.timing.waited(sent)
        headers_in = response.headers if response is not None else {}
        outcome = classify_exchange(
            settings,
            status,
            headers_in,
            body,
            exc,
            key_route=call.route.builtin,
            now=self.clock(),
        )
        claim.observed(outcome, headers_in, body)
        claim.settle(outcome)
        return failed_attempt(call, status, response, body, outcome, attempt), outcome

    def _failed_peek(
        self, call: Call, claim: Claim, found: Peek, attempt: int
    ) -> tuple[GatewayReply, Outcome] | None:
        """A stream whose first event is an error or that ended without one: the failed
        attempt (settled), as an HTTP error would be; None when it is to be relayed (an
        answer, or an error that is the client's: what the client would have had anyway)."""
        if found.decision not in (Decision.ERROR, Decision.EMPTY):
            return None
        outcome = outcome_of_peek(call.provider.settings, found, now=self.clock())
        if outcome.blame is Blame.CLIENT:
            return None
        response = claim.response
        assert response is not None
        claim.observed(outcome, response.headers, found.error or None)
        claim.settle(outcome)
        return stream_failed(call, found.status, outcome, attempt), outcome


_SUCCESSES = {
    status: Outcome(reason=None, blame=Blame.NONE, status=status) for status in range(300)
}


def _success(status: int) -> Outcome:
    """The outcome of an answer below 300 (from a table: one fewer object per request)."""
    return _SUCCESSES[status]


def _sooner(limited: Refusal | None, refused: Refusal) -> Refusal:
    """The refusal that frees the soonest."""
    if limited is None or refused.retry_after < limited.retry_after:
        return refused
    return limited


def _backoff(step: RetryStep, attempt: int, rng: random.Random) -> float:
    cap = step.backoff_sec * step.backoff_factor ** max(attempt - 1, 0)
    return full_jitter_backoff(attempt - 1, step.backoff_sec, step.backoff_factor, cap, rng)
