"""What an upstream exchange meant: the reason, who is to blame, and how long to wait.

`classify()` (added below the types) is the one pure function every upstream outcome goes through,
in the gateway and in the Keeper's probes alike.
"""

from __future__ import annotations

import email.utils
import enum
import functools
import math
import re
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from llmgateway.core.egress import EgressError
from llmgateway.transport import http1

if TYPE_CHECKING:
    from llmgateway.config.settings import ProviderSettings


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
    AUTH_REFUSED = "auth_refused"


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
}


def classify(
    provider: ProviderSettings,
    status: int | None,
    headers: Mapping[str, str],
    body_prefix: bytes,
    exc: BaseException | None,
    *,
    probe: bool = False,
    key_route: bool = True,
    now: float | None = None,
) -> Outcome:
    """Say what one upstream exchange meant. Pure: no I/O, no clock; never raises.

    `exc` (when the exchange failed or broke mid-body) wins over `status`. `probe=True` is the
    Keeper's view: its own payload is known-good, so a 400 means the key, a 401/403 too, and
    the `worker_health_policy.fast_status_mapping` applies instead of the gateway policy's.
    A gateway request's 401/403 counts against the key only when its body says the key (or its
    project) is refused; `key_route=False` (a route the operator added: files, batches…) makes
    every 401/403 the client's. `now` (Unix seconds) is needed only to read a `Retry-After`
    given as an HTTP date.
    """
    if exc is not None:
        return outcome_of(exception_reason(exc), status, None)
    if status is None:
        return outcome_of(ErrorReason.UNKNOWN, None, None)
    if 200 <= status < 300:
        return Outcome(reason=None, blame=Blame.NONE, status=status)
    if status in (401, 403) and not probe and not key_route:
        return outcome_of(ErrorReason.FORBIDDEN, status, None)
    reason = _configured_reason(provider, status, body_prefix, probe)
    if reason is None:
        reason = _DEFAULTS[provider.provider_type](status, body_prefix, probe)
    retry_after = retry_after_of(headers, body_prefix, now) if reason in _WAITS else None
    return outcome_of(reason, status, retry_after)


_WAITS = frozenset(
    {
        ErrorReason.RATE_LIMITED,
        ErrorReason.NO_QUOTA,
        ErrorReason.OVERLOADED,
        ErrorReason.SERVICE_UNAVAILABLE,
    }
)


def outcome_of(reason: ErrorReason, status: int | None, retry_after: float | None) -> Outcome:
    """The outcome of a failure for `reason`, blamed as that reason always is."""
    return Outcome(reason=reason, blame=_BLAME[reason], status=status, retry_after=retry_after)


# --- exceptions ------------------------------------------------------------------------------


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the wire (either transport, a timeout, a fault of our
    egress) and so has an outcome; anything else raised while calling upstream is a bug of the
    gateway's own code, which is nobody else's fault."""
    if isinstance(exc, OSError | EgressError | http1.InvalidRequest):
        return True
    client = sys.modules.get("aiohttp")  # loaded only once a proxy is used
    return client is not None and isinstance(exc, client.ClientError)


def exception_reason(exc: BaseException) -> ErrorReason:
    """The reason for an exception raised while calling upstream (http1, aiohttp, asyncio)."""
    if isinstance(exc, http1.ConnectError):
        return ErrorReason.EGRESS_ERROR  # connect or connection-pool wait: never reached upstream
    if isinstance(exc, http1.InvalidRequest):
        return ErrorReason.BAD_REQUEST  # refused by the seam before a byte was sent
    if isinstance(exc, http1.ProtocolError):
        return ErrorReason.SERVER_ERROR  # not a valid HTTP/1.1 answer, or too large
    # aiohttp carries only proxied traffic and is loaded on its first use: until then, no
    # exception can be one of its own (a gateway without proxies never loads it)
    client = sys.modules.get("aiohttp")
    if client is not None and isinstance(exc, client.ClientError):
        return _aiohttp_reason(client, exc)
    if isinstance(exc, TimeoutError):  # ours, asyncio's
        return ErrorReason.TIMEOUT
    if isinstance(exc, ConnectionResetError):
        return ErrorReason.STREAM_DISCONNECT
    if isinstance(exc, EgressError | ssl.SSLError | socket.gaierror | ConnectionRefusedError):
        return ErrorReason.EGRESS_ERROR
    if isinstance(exc, OSError):
        return ErrorReason.NETWORK_ERROR
    # Anything else is a fault of our own code or a cancellation: never count it against a key.
    return ErrorReason.EGRESS_ERROR


def _aiohttp_reason(client: Any, exc: BaseException) -> ErrorReason:
    # Order matters: aiohttp's timeout errors are OSErrors and TimeoutErrors at once.
    if isinstance(exc, client.ConnectionTimeoutError):
        return ErrorReason.EGRESS_ERROR  # connect or connection-pool wait: never reached upstream
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError
        return ErrorReason.TIMEOUT
    if isinstance(exc, client.ServerDisconnectedError | client.ClientPayloadError):
        return ErrorReason.STREAM_DISCONNECT
    if isinstance(exc, client.ClientConnectionResetError):
        return ErrorReason.STREAM_DISCONNECT
    egress = (client.ClientConnectorError, client.ServerFingerprintMismatch, client.InvalidURL)
    if isinstance(exc, egress):  # refused, DNS, TLS, certificate, proxy connection
        return ErrorReason.EGRESS_ERROR
    if isinstance(exc, client.ClientConnectionError | OSError):
        return ErrorReason.NETWORK_ERROR
    return ErrorReason.EGRESS_ERROR  # not about the far side: never the key's


# --- status codes ----------------------------------------------------------------------------


def _configured_reason(
    provider: ProviderSettings, status: int, body: bytes, probe: bool
) -> ErrorReason | None:
    policy = provider.worker_health_policy if probe else provider.gateway_policy
    fast = policy.fast_status_mapping.get(status)
    if fast is not None:
        return fast
    parsing = provider.gateway_policy.error_parsing
    if not parsing.enabled or not parsing.rules:
        return None
    document = _json(body)
    if document is None:
        return None
    for rule in sorted(parsing.rules, key=lambda r: -r.priority):
        if rule.status_code != status:
            continue
        value = json_path(document, rule.error_path)
        if value is not None and _matches(rule.match_pattern, value):
            return rule.map_to
    return None


def _common_reason(status: int, probe: bool) -> ErrorReason:
    """The mapping both provider types share, for statuses without a special meaning."""
    if status >= 500:
        return _SERVER_REASONS.get(status, ErrorReason.SERVER_ERROR)
    if status == 408:
        return ErrorReason.TIMEOUT
    if status == 402:
        return ErrorReason.NO_QUOTA
    if status == 401:
        return ErrorReason.INVALID_KEY
    if status == 403:
        return ErrorReason.NO_ACCESS
    if status == 429:
        return ErrorReason.RATE_LIMITED
    if status == 404 and probe:
        return ErrorReason.NO_MODEL
    if 400 <= status < 500:
        # Our probe payload is known-good, so a 400 on a probe is about the key.
        return ErrorReason.INVALID_KEY if probe and status == 400 else ErrorReason.BAD_REQUEST
    return ErrorReason.UNKNOWN


_SERVER_REASONS = {
    503: ErrorReason.OVERLOADED,
    504: ErrorReason.TIMEOUT,
    529: ErrorReason.OVERLOADED,
}


# Upstreams quote the request in their errors (Gemini names a body's unknown fields, OpenRouter
# returns flagged input): a phrase anywhere in a body could be the client's own. So the verdicts
# that blame a key (or an egress) read only the error's own fields, at fixed places, and a
# message only from its start, which the upstream writes. A 401 is answered before the body is
# read, so its text is the upstream's.


@dataclass(frozen=True, slots=True)
class _Fields:
    """The fixed fields of an error body: `error.message`, `error.code`, `error.type` or
    Gemini's `error.status`, and Gemini's `error.details[].reason` (empty when absent)."""

    message: str = ""
    code: str = ""
    kind: str = ""
    reasons: frozenset[str] = frozenset()

    @classmethod
    def of(cls, body: bytes) -> _Fields:
        document = _json(body)
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, str):
            return cls(message=error)
        if not isinstance(error, dict):
            return cls()
        details = error.get("details")
        reasons = frozenset(
            d["reason"]
            for d in (details if isinstance(details, list) else ())
            if isinstance(d, dict) and isinstance(d.get("reason"), str)
        )
        kind = error.get("status") if isinstance(error.get("status"), str) else error.get("type")
        return cls(_text(error.get("message")), _text(error.get("code")), _text(kind), reasons)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _openai_reason(status: int, body: bytes, probe: bool) -> ErrorReason:
    if status not in (401, 403, 404, 429):
        return _common_reason(status, probe)
    fields = _Fields.of(body)
    if status == 429 and "insufficient_quota" in (fields.code, fields.kind):
        return ErrorReason.NO_QUOTA
    if status == 403 and fields.code == "unsupported_country_region_territory":
        return ErrorReason.EGRESS_ERROR  # the egress IP's region, not the key
    if status == 404 and fields.code == "model_not_found":
        return ErrorReason.NO_MODEL
    if status == 401 and not probe:
        # every credential but the key is stripped: a 401 that speaks of authentication at all
        # is about the key (OpenAI, DeepSeek, Groq, OpenRouter, vLLM word it differently), unless
        # it says no key arrived, which our request always carries: doubted, never condemned
        missing = fields.code == "missing_api_key" or _MISSING_KEY.match(fields.message)
        if missing or not _OPENAI_AUTH.search(body):
            return ErrorReason.AUTH_REFUSED
        return ErrorReason.INVALID_KEY
    if status == 403 and not probe:
        refused = fields.code in _OPENAI_NO_ACCESS_CODES or _OPENAI_NO_ACCESS.match(fields.message)
        return ErrorReason.NO_ACCESS if refused else ErrorReason.FORBIDDEN
    return _common_reason(status, probe)


def _gemini_reason(status: int, body: bytes, probe: bool) -> ErrorReason:
    if not 400 <= status < 500:
        return _common_reason(status, probe)
    fields = _Fields.of(body)
    if status in (401, 403) and not probe and _MISSING_KEY.match(fields.message):
        return ErrorReason.AUTH_REFUSED
    if status != 429 and (fields.reasons & _BAD_KEY_REASONS or _BAD_KEY.match(fields.message)):
        return ErrorReason.INVALID_KEY
    if status == 400 and fields.message.startswith("User location is not supported"):
        return ErrorReason.EGRESS_ERROR  # the egress IP's region, not the key
    if status == 404:
        return ErrorReason.NO_MODEL
    if status == 429 and _PER_DAY_QUOTA.search(body):
        return ErrorReason.NO_QUOTA
    if status in (401, 403) and (
        any(_GEMINI_NO_ACCESS_REASON.fullmatch(r) for r in fields.reasons)
        or _GEMINI_NO_ACCESS.match(fields.message)
    ):
        return ErrorReason.NO_ACCESS  # the key, or the project behind it, may not use the API
    if status == 401 and not probe:
        return ErrorReason.INVALID_KEY if _GEMINI_AUTH.search(body) else ErrorReason.AUTH_REFUSED
    if status == 403 and not probe:
        # "The caller does not have permission": a cached content, file or tuned model of
        # another project that the request names, not the key
        return ErrorReason.FORBIDDEN
    return _common_reason(status, probe)


_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_BAD_KEY = re.compile(r"(?:Your )?API key (?:not valid|expired|was reported as leaked)")
_MISSING_KEY = re.compile(
    r"You didn't provide an API key|Method doesn't allow unregistered callers", re.IGNORECASE
)
_GEMINI_AUTH = re.compile(rb"UNAUTHENTICATED|authenticat|API key", re.IGNORECASE)
_GEMINI_NO_ACCESS_REASON = re.compile(
    r"SERVICE_DISABLED|API_KEY_[A-Z_]*BLOCKED|CONSUMER_SUSPENDED|BILLING_DISABLED"
)
_GEMINI_NO_ACCESS = re.compile(
    r"[\w ]+ API has not been used in project|Permission denied: Consumer [^ ]+ has been suspended"
)
_OPENAI_AUTH = re.compile(
    rb"api[ _-]?key|authenticat|unauthori[sz]ed|credential|token|account|organization|user not",
    re.IGNORECASE,
)
_OPENAI_NO_ACCESS_CODES = frozenset({"account_deactivated", "billing_not_active"})
_OPENAI_NO_ACCESS = re.compile(
    r"Project [^ ]+ does not have access to model|You are not allowed to sample from this model"
    r"|The OpenAI account associated with this API key has been deactivated"
)
_PER_DAY_QUOTA = re.compile(rb'"quotaId"\s*:\s*"[^"]*PerDay')

_DEFAULTS: dict[str, Callable[[int, bytes, bool], ErrorReason]] = {
    "openai_like": _openai_reason,
    "gemini": _gemini_reason,
}


# --- bodies ----------------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    """The JSON document in an error body (unwrapping Gemini's `[{...}]`), or None."""
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if isinstance(document, list) and document:
        return document[0]
    return document


def json_path(document: Any, path: str) -> str | None:
    """The value at a dotted path (`error.details.0.reason`) as text, or None when absent."""
    node = document
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            index = int(part)
            node = node[index] if -len(node) <= index < len(node) else None
        else:
            return None
        if node is None:
            return None
    if isinstance(node, str):
        return node
    return orjson.dumps(node).decode()


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return None


def _matches(pattern: str, value: str) -> bool:
    compiled = _pattern(pattern)
    return compiled is not None and compiled.search(value) is not None


# --- how long to wait ------------------------------------------------------------------------


def retry_after_of(
    headers: Mapping[str, str], body: bytes, now: float | None = None
) -> float | None:
    """The wait in seconds an upstream asked for, or None when it named none (or nonsense).

    Sources, first valid wins: `retry-after-ms`, `Retry-After` (seconds, or an HTTP date when
    `now` is given), OpenAI's `x-ratelimit-reset-requests`/`-tokens`, Gemini's body `retryDelay`.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    for seconds in (
        _number(lowered.get("retry-after-ms"), 0.001),
        _retry_after_header(lowered.get("retry-after"), now),
        _ratelimit_reset(lowered),
        _retry_delay(body),
    ):
        if seconds is not None:
            return seconds
    return None


def _number(text: str | None, scale: float = 1.0) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip()) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _retry_after_header(text: str | None, now: float | None) -> float | None:
    seconds = _number(text)
    if seconds is not None or text is None or now is None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) in seconds, or None."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _ratelimit_reset(lowered: Mapping[str, str]) -> float | None:
    # The limit that ran out (remaining 0) decides; if none is known to have, the soonest reset.
    exhausted: list[float] = []
    resets: list[float] = []
    for kind in ("requests", "tokens"):
        text = lowered.get(f"x-ratelimit-reset-{kind}")
        seconds = None if text is None else parse_duration(text)
        if seconds is None:
            continue
        resets.append(seconds)
        if lowered.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            exhausted.append(seconds)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')


def _retry_delay(body: bytes) -> float | None:
    found = _RETRY_DELAY.search(body)
    return None if found is None else float(found.group(1))
