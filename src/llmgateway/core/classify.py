"""`classify()`: what an upstream answer means, from its status, headers and error body.

The one pure function every upstream answer goes through, in the gateway and in the Keeper's
probes alike (an exchange that raised instead is `llmgateway.transport.errors`'). Only error
bodies are read, and only their first `BODY_PREFIX_BYTES`.

Two client faults have a reason of their own, because a route may act on them (another target
or a longer-context alias may serve) where any other client fault ends the request:

- `context_length`: the request does not fit the model's context window. OpenAI-like: a 400
  (or 413) whose `error.code` or `error.type` says so (`context_length_exceeded`, llama.cpp's
  `exceed_context_size_error`) or whose message starts as OpenAI, DeepSeek, vLLM, OpenRouter
  and Mistral word it ("This model's maximum context length is N tokens…"); Gemini (native and
  its OpenAI-compatible endpoint): a 400 "The input token count (N) exceeds the maximum number
  of tokens allowed (M)"; Anthropic: a 400 "prompt is too long: N tokens > M maximum" (or
  "input length and `max_tokens` exceed context limit").
- `no_model`: the upstream says the model itself does not exist. OpenAI-like: a 404 with
  `error.code` `model_not_found` or a message "The model `x` does not exist…", or a 400 as
  DeepSeek ("Model Not Exist") and OpenRouter ("x is not a valid model ID") answer; Gemini: a
  404 "models/x is not found for API version …"; Anthropic: a 404 `not_found_error`
  "model: x". Any other 404 (a file, a batch, a cached content, a path the upstream does not
  serve) is the client's `bad_request`. A Keeper probe names a model it was told exists, so
  there every 404 is `no_model`.

Both are blamed on the client: no key, breaker or cooldown learns from them, and the client
gets the upstream's answer as for any client fault.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmgateway.core.outcomes import Blame, ErrorReason, Outcome, outcome_of
from llmgateway.core.waits import retry_after_of


class StatusMapping(Protocol):
    """Statuses mapped to a reason outright (`config.settings.HealthPolicy` is one)."""

    @property
    def fast_status_mapping(self) -> Mapping[int, ErrorReason]: ...


class ErrorRule(Protocol):
    """A reason read from an error body (`config.settings.ErrorParsingRule` is one): for
    `status_code`, the value at `error_path` matching `match_pattern`; the highest `priority`
    rule that matches decides."""

    @property
    def status_code(self) -> int: ...
    @property
    def error_path(self) -> str: ...
    @property
    def match_pattern(self) -> str: ...
    @property
    def map_to(self) -> ErrorReason: ...
    @property
    def priority(self) -> int: ...


class ErrorRules(Protocol):
    """The operator's error-body rules (`config.settings.ErrorParsing` is one)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def rules(self) -> Sequence[ErrorRule]: ...


class GatewayStatusPolicy(StatusMapping, Protocol):
    """How the gateway reads answers (`config.settings.GatewayPolicy` is one)."""

    @property
    def error_parsing(self) -> ErrorRules: ...


class Classified(Protocol):
    """What classifying reads of a provider (`config.settings.ProviderSettings` is one):
    its type (`openai_like`, `gemini`, `anthropic`) and its two policies."""

    @property
    def provider_type(self) -> str: ...
    @property
    def gateway_policy(self) -> GatewayStatusPolicy: ...
    @property
    def worker_health_policy(self) -> StatusMapping: ...


def classify(
    provider: Classified,
    status: int | None,
    headers: Mapping[str, str],
    body_prefix: bytes,
    *,
    probe: bool = False,
    key_route: bool = True,
    now: float | None = None,
) -> Outcome:
    """Say what one upstream answer meant. Pure: no I/O, no clock; never raises.

    `status` None (no answer) is an unknown outcome. `probe=True` is the Keeper's view: its own
    payload is known-good, so a 400 means the key, a 401/403 too, and the
    `worker_health_policy.fast_status_mapping` applies instead of the gateway policy's.
    A gateway request's 401/403 counts against the key only when its body says the key (or its
    project) is refused; `key_route=False` (a route the operator added: files, batches…) makes
    every 401/403 the client's. `now` (Unix seconds) is needed only to read a `Retry-After`
    given as an HTTP date.
    """
    if status is None:
        return outcome_of(ErrorReason.UNKNOWN, None, None)
    if 200 <= status < 300:
        return Outcome(reason=None, blame=Blame.NONE, status=status)
    body_prefix = body_prefix[:BODY_PREFIX_BYTES]
    if status in (401, 403) and not probe and not key_route:
        return outcome_of(ErrorReason.FORBIDDEN, status, None)
    reason = _configured_reason(provider, status, body_prefix, probe)
    if reason is None:
        reason = _DEFAULTS[provider.provider_type](status, body_prefix, probe)
    retry_after = retry_after_of(headers, body_prefix, now) if reason in _WAITS else None
    return outcome_of(reason, status, retry_after)


BODY_PREFIX_BYTES = 64 * 1024
"""The most of an error body `classify()` reads (callers read no more than this either)."""

_WAITS = frozenset(
    {
        ErrorReason.RATE_LIMITED,
        ErrorReason.NO_QUOTA,
        ErrorReason.OVERLOADED,
        ErrorReason.SERVICE_UNAVAILABLE,
    }
)


# --- status codes ----------------------------------------------------------------------------


def _configured_reason(
    provider: Classified, status: int, body: bytes, probe: bool
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
        if error is None and isinstance(document, dict) and document.get("object") == "error":
            error = document  # older vLLM: the error's fields at the top level
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
    if status not in (400, 401, 403, 404, 413, 429):
        return _common_reason(status, probe)
    fields = _Fields.of(body)
    if status == 429 and "insufficient_quota" in (fields.code, fields.kind):
        return ErrorReason.NO_QUOTA
    if status == 403 and fields.code == "unsupported_country_region_territory":
        return ErrorReason.EGRESS_ERROR  # the egress IP's region, not the key
    if status in (400, 413) and (
        {fields.code, fields.kind} & _CONTEXT_CODES or _OPENAI_CONTEXT.match(fields.message)
    ):
        return ErrorReason.CONTEXT_LENGTH
    if status == 404 and (
        fields.code == "model_not_found" or _OPENAI_NO_MODEL.match(fields.message)
    ):
        return ErrorReason.NO_MODEL
    if status == 400 and _OPENAI_NO_MODEL_400.fullmatch(fields.message):
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
    if status == 400 and _GEMINI_CONTEXT.match(fields.message):
        return ErrorReason.CONTEXT_LENGTH
    if status == 404 and (probe or _GEMINI_NO_MODEL.match(fields.message)):
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


def _anthropic_reason(status: int, body: bytes, probe: bool) -> ErrorReason:
    """Anthropic's documented errors (`error.type` by status) on either of its endpoints."""
    if not 400 <= status < 500:
        return _common_reason(status, probe)  # 500 api_error, 529 overloaded_error
    fields = _Fields.of(body)
    if fields.kind == "billing_error" or (
        status == 400 and _ANTHROPIC_NO_CREDIT.match(fields.message)
    ):
        return ErrorReason.NO_QUOTA
    if status in (400, 413) and _ANTHROPIC_CONTEXT.match(fields.message):
        return ErrorReason.CONTEXT_LENGTH
    if status == 404 and (probe or _ANTHROPIC_NO_MODEL.fullmatch(fields.message)):
        return ErrorReason.NO_MODEL
    if status == 401 and not probe and fields.kind != "authentication_error":
        return ErrorReason.AUTH_REFUSED  # not Anthropic's own word on the key: doubted
    if status == 403 and not probe and fields.kind != "permission_error":
        return ErrorReason.FORBIDDEN
    return _common_reason(status, probe)  # 401 invalid key, 403 no access, 429 rate limited


_ANTHROPIC_NO_CREDIT = re.compile(r"Your credit balance is too low")
_ANTHROPIC_CONTEXT = re.compile(
    r"prompt is too long: \d+ tokens > \d+ maximum"
    r"|input length and `max_tokens` exceed context limit"
)
_ANTHROPIC_NO_MODEL = re.compile(r"model: \S+")
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
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_OPENAI_CONTEXT = re.compile(
    r"This (?:model|endpoint)(?:'s)? maximum context length is \d+ tokens"
    r"|Prompt contains \d+ tokens.{0,40} too large for model with \d+ maximum context length",
    re.IGNORECASE,
)
_GEMINI_CONTEXT = re.compile(
    r"The input token count \(\d+\) exceeds the maximum number of tokens allowed \(\d+\)"
)
_OPENAI_NO_MODEL = re.compile(r"The model:? `[^`]*` does not exist|That model does not exist")
_OPENAI_NO_MODEL_400 = re.compile(r"Model Not Exist|\S+ is not a valid model ID")
_GEMINI_NO_MODEL = re.compile(r"models/\S+ is not found for API version ")
_PER_DAY_QUOTA = re.compile(rb'"quotaId"\s*:\s*"[^"]*PerDay')

_DEFAULTS: dict[str, Callable[[int, bytes, bool], ErrorReason]] = {
    "openai_like": _openai_reason,
    "gemini": _gemini_reason,
    "anthropic": _anthropic_reason,
}


# --- bodies ----------------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    """The JSON document in an error body (unwrapping Gemini's `[{...}]`), or None."""
    try:
        document = json.loads(body)
    except (ValueError, TypeError, RecursionError):  # not JSON, not UTF-8, or nested too deep
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
    return json.dumps(node, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return None


def _matches(pattern: str, value: str) -> bool:
    compiled = _pattern(pattern)
    return compiled is not None and compiled.search(value) is not None
