"""What an upstream exchange meant: the reason, who is to blame, and how long to wait.

`classify()` (added below the types) is the one pure function every upstream outcome goes through,
in the gateway and in the Keeper's probes alike.
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

    @property
    def is_retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def is_fatal(self) -> bool:
        return self in _FATAL

    @property
    def is_client_error(self) -> bool:
        return self in _CLIENT


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
_FATAL = frozenset(
    {ErrorReason.INVALID_KEY, ErrorReason.NO_ACCESS, ErrorReason.NO_QUOTA, ErrorReason.NO_MODEL}
)
_CLIENT = frozenset({ErrorReason.BAD_REQUEST, ErrorReason.UNKNOWN})


class KeyStatus(enum.StrEnum):
    """The status a key (or key × model) has in the store: `valid`, `untested`, or a reason."""

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


class Blame(enum.StrEnum):
    """Whose fault an outcome is; it decides which state changes."""

    NONE = "none"  # success
    CLIENT = "client"  # pass through, nobody penalised
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
