"""What an upstream exchange meant: the reason, who is to blame, and how long to wait.

The meaning of an answer is `llmgateway.core.classify`'s; of an exception raised while calling
upstream, `llmgateway.transport.errors`'.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorReason(enum.StrEnum):
    """Why an upstream call did not succeed (the original project's values, plus our own)."""

    UNKNOWN = "unknown"
    NETWORK_ERROR = "network_error"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    OVERLOADED = "overloaded"
    BAD_REQUEST = "bad_request"
    INVALID_KEY = "invalid_key"
    NO_ACCESS = "no_access"
    RATE_LIMITED = "rate_limited"
    NO_QUOTA = "no_quota"
    NO_MODEL = "no_model"
    STREAM_DISCONNECT = "stream_disconnect"
    # Faults of our own side of the wire (connect, DNS, TLS, proxy, local pool): never the key's.
    EGRESS_ERROR = "egress_error"
    # A 401 whose body does not say why: the key is doubted (taken out of this gateway's
    # rotation for a while), and the Keeper's probe decides whether it is invalid.
    AUTH_REFUSED = "auth_refused"
    # A 403 about something the request names (another project's file or cache): the client's.
    FORBIDDEN = "forbidden"
    # The request is longer than the model's context window: the client's (another key or
    # provider serving the same model answers the same), though a longer-context model may serve.
    CONTEXT_LENGTH = "context_length"

    @property
    def is_retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorReason.NETWORK_ERROR,
        ErrorReason.TIMEOUT,
        ErrorReason.RATE_LIMITED,
        ErrorReason.SERVER_ERROR,
        ErrorReason.SERVICE_UNAVAILABLE,
        ErrorReason.OVERLOADED,
        ErrorReason.STREAM_DISCONNECT,
        ErrorReason.EGRESS_ERROR,
    }
)


class KeyStatus(enum.StrEnum):
    """The status a key (or key × model) has in the store: `valid`, `untested`, or a reason.

    The reasons that never describe a key have none: `forbidden` and `context_length` (about
    the request), and `egress_error` (the Keeper stores it as `network_error`)."""

    VALID = "valid"
    UNTESTED = "untested"
    UNKNOWN = "unknown"
    NETWORK_ERROR = "network_error"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    OVERLOADED = "overloaded"
    BAD_REQUEST = "bad_request"
    INVALID_KEY = "invalid_key"
    NO_ACCESS = "no_access"
    RATE_LIMITED = "rate_limited"
    NO_QUOTA = "no_quota"
    NO_MODEL = "no_model"
    STREAM_DISCONNECT = "stream_disconnect"
    AUTH_REFUSED = "auth_refused"


class Blame(enum.StrEnum):
    """Whose fault an outcome is; it decides which state changes."""

    NONE = "none"  # success
    CLIENT = "client"  # the client's request: passed through, no key or breaker penalised
    NOBODY = "nobody"  # a failure no key is to blame for: cancelled, or judged provider-wide
    KEY = "key"  # the key is bad, limited or out of quota
    PROVIDER = "provider"  # 5xx / timeouts: statistically the key, surely the provider
    EGRESS = "egress"  # our side of the wire: never the key


ALL_MODELS = "__ALL_MODELS__"
"""The model name under which a key's one status is kept when `shared_key_status` is on."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The meaning of one upstream exchange.

    `retry_after` is the wait in seconds the upstream asked for (Retry-After, retry-after-ms,
    Gemini retryDelay), or None when it named none.
    """

    reason: ErrorReason | None
    blame: Blame
    status: int | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


_BLAME: dict[ErrorReason, Blame] = {
    ErrorReason.UNKNOWN: Blame.CLIENT,
    ErrorReason.BAD_REQUEST: Blame.CLIENT,
    ErrorReason.NO_MODEL: Blame.CLIENT,
    ErrorReason.INVALID_KEY: Blame.KEY,
    ErrorReason.NO_ACCESS: Blame.KEY,
    ErrorReason.RATE_LIMITED: Blame.KEY,
    ErrorReason.NO_QUOTA: Blame.KEY,
    ErrorReason.NETWORK_ERROR: Blame.PROVIDER,
    ErrorReason.TIMEOUT: Blame.PROVIDER,
    ErrorReason.SERVER_ERROR: Blame.PROVIDER,
    ErrorReason.SERVICE_UNAVAILABLE: Blame.PROVIDER,
    ErrorReason.OVERLOADED: Blame.PROVIDER,
    ErrorReason.STREAM_DISCONNECT: Blame.PROVIDER,
    ErrorReason.EGRESS_ERROR: Blame.EGRESS,
    ErrorReason.AUTH_REFUSED: Blame.KEY,
    ErrorReason.FORBIDDEN: Blame.CLIENT,
    ErrorReason.CONTEXT_LENGTH: Blame.CLIENT,
}


def outcome_of(reason: ErrorReason, status: int | None, retry_after: float | None) -> Outcome:
    """The outcome of a failure for `reason`, blamed as that reason always is."""
    return Outcome(reason=reason, blame=_BLAME[reason], status=status, retry_after=retry_after)
