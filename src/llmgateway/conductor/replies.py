"""Replies the gateway makes itself (`GatewayReply`): an upstream error passed on, scrubbed, or
our own error in the client's API shape, with the attempt loop's rules for which one a request
that found no answer to relay ends with."""

from __future__ import annotations

from dataclasses import dataclass

from llmgateway import providers
from llmgateway.conductor.call import Call
from llmgateway.core.guard import Blocked
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.pool_keys import Unavailable
from llmgateway.limits import Refusal
from llmgateway.transport.upstream import UpstreamResponse


@dataclass(frozen=True, slots=True)
class GatewayReply:
    """A complete reply of the gateway's own making: an upstream client error passed through,
    or our own error. Sent in one piece; nothing of it is held once it is built."""

    status: int
    headers: dict[str, str]
    body: bytes
    attempts: int
    reason: str


_PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms")


def failed_attempt(
    call: Call,
    status: int | None,
    response: UpstreamResponse | None,
    body: bytes,
    outcome: Outcome,
    attempts: int,
) -> GatewayReply:
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


def stream_failed(call: Call, status: int | None, outcome: Outcome, attempts: int) -> GatewayReply:
    """What the client sees if a stream that failed before its first event (an error event
    standing for `status`, or no event at all) turns out to be the last attempt: the error's
    meaning in the gateway's own words (the event's body may describe the key's account)."""
    if outcome.blame is Blame.KEY:
        return failed_attempt(call, None, None, b"", outcome, attempts)
    reason = outcome.reason.value if outcome.reason else "ok"
    if status is None:
        message = "The upstream's stream ended before its first event."
    else:
        message = f"The upstream's stream began with an error (status {status})."
    return _error(call, 502, message, "bad_upstream_response", None, attempts, reason)


def no_key(
    call: Call,
    why: Unavailable | Blocked,
    last: GatewayReply | None,
    limited: Refusal | None,
    attempts: int,
) -> GatewayReply:
    """The reply of a request the pool or the guard has no (further) key for: an open breaker
    fails fast; otherwise the last failed attempt's reply stands, unless a key could serve once
    its per-key limit allows (`limited`, the soonest such refusal)."""
    if isinstance(why, Blocked):
        if why.reason == "circuit_open" or last is None:
            return _blocked(call, why, attempts)
        return last
    if limited is not None:  # a key could serve, but not before then
        return _limited(call, limited, attempts)
    return last if last is not None else _unavailable(call, why, attempts)


def _passed(
    call: Call,
    status: int,
    response: UpstreamResponse,
    body: bytes,
    attempts: int,
    reason: str,
) -> GatewayReply:
    """An upstream error answer passed on to the client, scrubbed of any pool key (a hostile
    or careless upstream may echo the request it got)."""
    headers = {k: response.headers[k] for k in _PASS_HEADERS if k in response.headers}
    return GatewayReply(status, headers, call.provider.secrets.scrub(body), attempts, reason)


def _blocked(call: Call, why: Blocked, attempts: int) -> GatewayReply:
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


def _unavailable(call: Call, why: Unavailable, attempts: int) -> GatewayReply:
    if why.reason == "rate_limited":
        wait = why.retry_after if why.retry_after is not None else 1.0
        message = "Every key of this provider is rate-limited; retry after the indicated time."
        return _error(call, 429, message, "rate_limit_exceeded", wait, attempts, "rate_limited")
    wait = why.retry_after if why.retry_after is not None else 5.0
    message = "No healthy key is available for this provider right now."
    return _error(call, 503, message, "no_healthy_key", wait, attempts, "no_keys")


def _limited(call: Call, why: Refusal, attempts: int) -> GatewayReply:
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
) -> GatewayReply:
    headers = {"content-type": "application/json"}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    body = providers.error_body(call.api, status, message, code=code)
    return GatewayReply(status, headers, body, attempts, reason)
