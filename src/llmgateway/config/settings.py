"""The configuration (`config/providers.yaml`): typed, frozen, strictly validated.

The original project's schema is accepted as it is; our additions are documented in
`examples/full_config.yaml`. Settings are built once by `llmgateway.config.load.load_settings()`
(which adds `${VAR}` substitution and the cross-field rules) and passed down.

Relative paths (`keys_path`, `pool_list_path`, a relative SQLite file) are taken relative to
the current working directory of the process, as the original project did.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmgateway.config.route_settings import GatewayToken, RouteSettings
from llmgateway.core.clients import networks
from llmgateway.core.egress import SOCKS_SCHEMES, socks_login_problem
from llmgateway.core.egress import ProxyMode as ProxyMode
from llmgateway.core.outcomes import ErrorReason
from llmgateway.core.pool_keys import Selection as Selection
from llmgateway.core.quota import zone_named
from llmgateway.core.resilience import BreakerMode as BreakerMode


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _url_checker(schemes: tuple[str, ...], example: str) -> AfterValidator:
    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
            ok = parts.scheme in schemes and bool(parts.hostname) and value == value.strip()
            ok = ok and (parts.port is None or parts.port > 0)
        except ValueError:  # a malformed host or port
            ok = False
        if not ok:
            raise PydanticCustomError(
                "url_scheme",
                "expected a URL starting with {schemes}",
                {"schemes": " or ".join(f"{s}://" for s in schemes), "hint": f"e.g. {example}"},
            )
        return value

    return AfterValidator(check)


def _check_regex(value: str) -> str:
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise PydanticCustomError(
            "regex",
            "not a valid regular expression: {error}",
            {"error": str(exc), "hint": "Python regular-expression syntax, matched ignoring case"},
        ) from None
    return value


def _check_database_url(value: str) -> str:
    scheme = value.partition("://")[0].partition("+")[0]
    if "://" not in value or scheme not in ("sqlite", "postgresql", "postgres"):
        raise PydanticCustomError(
            "database_url",
            "expected a sqlite:// or postgresql:// URL",
            {"hint": "e.g. sqlite:///data/llmgateway.db or postgresql://user:pass@host:5432/db"},
        )
    return value


# the example is no real provider's: a hint showing a URL of the config would be masked
HttpUrl = Annotated[str, _url_checker(("http", "https"), "https://llm.example/v1")]
RedisUrl = Annotated[str, _url_checker(("redis", "rediss"), "redis://127.0.0.1:6379/0")]
"""A redis:// or rediss:// (TLS) URL, optionally with user:pass@ and a /db number."""
"""An http:// or https:// URL, kept as text."""


def _check_socks_login(value: str) -> str:
    problem = socks_login_problem(value)
    if problem is not None:
        raise PydanticCustomError("socks_login", problem)
    return value


ProxyUrl = Annotated[
    str,
    _url_checker(("http", "https", *SOCKS_SCHEMES), "http://user:pass@10.0.0.1:3128"),
    AfterValidator(_check_socks_login),
]
"""An outbound proxy URL: http://, https://, socks5:// or socks5h:// (the proxy resolves host
names), optionally with user:pass@."""
StatusCode = Annotated[int, Field(ge=100, le=599)]
"""An HTTP status code."""


class StreamingMode(enum.StrEnum):
    """The original's `streaming_mode`, accepted as it is: both values relay answers as they
    come (the original's `disabled` only made it read the request body, as we always do)."""

    AUTO = "auto"
    DISABLED = "disabled"


class StreamUsage(enum.StrEnum):
    """Whether an OpenAI-format streamed chat/completions request asks the upstream for its
    usage chunk (`stream_options.include_usage`) on the client's behalf, for token accounting:
    `auto` where the provider type is known to accept it (openai_like, gemini's
    OpenAI-compatible endpoint), `inject` always, `never` never. The client's stream is left as
    it asked for it (the added usage chunk removed)."""

    AUTO = "auto"
    INJECT = "inject"
    NEVER = "never"


class DebugMode(enum.StrEnum):
    DISABLED = "disabled"
    HEADERS_ONLY = "headers_only"
    FULL_BODY = "full_body"


class LimitsBackend(enum.StrEnum):
    AUTO = "auto"  # redis when redis_url is set, else postgres on PostgreSQL, else local
    LOCAL = "local"  # counted in this process only
    REDIS = "redis"
    POSTGRES = "postgres"


class Pooler(enum.StrEnum):
    """What stands between llmgateway and PostgreSQL at `database.url`."""

    AUTO = "auto"  # found from the server's answers: a pooler is taken for transaction pooling
    NONE = "none"  # PostgreSQL itself (or a plain TCP proxy)
    PGBOUNCER_TRANSACTION = "pgbouncer_transaction"  # or any pooler that pools transactions
    PGBOUNCER_SESSION = "pgbouncer_session"  # a pooler that keeps one server per client


def _with_async_driver(url: str) -> str:
    """`url` with the async driver of its scheme (an explicit driver is kept)."""
    scheme, sep, rest = url.partition("://")
    return _ASYNC_DRIVERS.get(scheme, scheme) + sep + rest


class DatabaseSettings(_Model):
    """Where state lives. `url` wins; else host/port/user/password/dbname build a PostgreSQL
    URL when any of them is given; else the embedded SQLite default."""

    url: Annotated[str, AfterValidator(_check_database_url)] | None = Field(
        default=None, repr=False
    )
    host: str = "localhost"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "llm_gateway"
    password: str = Field(default="", repr=False)
    dbname: str = "llmgateway"
    pool_size: int = Field(default=5, ge=1, le=100)
    # PostgreSQL itself, for the session features only (notices, advisory locks, migrations)
    direct_url: Annotated[str, AfterValidator(_check_database_url)] | None = Field(
        default=None, repr=False
    )
    pooler: Pooler = Pooler.AUTO

    @field_validator("url", "direct_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if value == "" else value  # so `url: ${DATABASE_URL:-}` can mean unset

    @property
    def direct_async_url(self) -> str | None:
        """`direct_url` with its async driver, or None when not set."""
        return None if self.direct_url is None else _with_async_driver(self.direct_url)

    @property
    def async_url(self) -> str:
        """The SQLAlchemy async URL: `url` with its async driver (`sqlite+aiosqlite`,
        `postgresql+asyncpg`; an explicit driver is kept), else a PostgreSQL URL from
        host/port/user/password/dbname when any of them was set, else the SQLite default."""
        if self.url is not None:
            return _with_async_driver(self.url)
        if self.model_fields_set & {"host", "port", "user", "password", "dbname"}:
            auth = quote(self.user, safe="")
            if self.password:
                auth += ":" + quote(self.password, safe="")
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"postgresql+asyncpg://{auth}@{host}:{self.port}/{quote(self.dbname, safe='')}"
        return DEFAULT_DATABASE_URL

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which kind of store the URL points at."""
        return "sqlite" if self.async_url.startswith("sqlite") else "postgresql"


DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/llmgateway.db"
"""The embedded default store (relative to the working directory)."""
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


class LoggingSettings(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
    dir: Path | None = None  # write rotated files under this folder too
    access: StrictBool = False  # one `request done` line per proxied request, at INFO


class WorkerSettings(_Model):
    max_concurrent_providers: int = Field(default=10, ge=1)
    sync_interval_sec: float = Field(default=300.0, gt=0)
    probe_interval_sec: float = Field(default=60.0, gt=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    watch_files: bool = True  # sync at once when a key or proxy file changes
    egress_retry_sec: float = Field(default=60.0, gt=0)  # re-probe after our side failed
    proxy_check_interval_sec: float = Field(default=300.0, gt=0)  # re-probe a live proxy
    proxy_retry_sec: float = Field(default=60.0, gt=0)  # re-probe a dead proxy
    purge_removed_after_days: float = Field(default=30.0, gt=0)
    audit_retention_days: float = Field(default=90.0, gt=0)  # the audit log's rows, then purged
    job_retention_days: float = Field(default=30.0, gt=0)  # finished bulk jobs, then purged
    vacuum_interval_hours: float = Field(default=168.0, gt=0)
    usage_retention_days: float = Field(default=7.0, gt=0)  # the hourly usage counts, then purged
    # a long probe round reports its progress at least this often (and at every 10 %)
    progress_interval_sec: float = Field(default=10.0, gt=0, le=3600)


class UsageSettings(_Model):
    """`usage:`: how token usage is reckoned. `timezone` (an IANA name) sets where the
    calendar days, weeks (from Monday) and months of the clients' token quotas begin."""

    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone_named(value)  # raises ValueError saying what a zone name looks like
        return value

    def zone(self) -> ZoneInfo:
        """The zone of the quota periods."""
        return zone_named(self.timezone)


class MetricsSettings(_Model):
    enabled: bool = True
    access_token: str = Field(default="", repr=False)
    # an empty access_token disables /metrics (the original's rule) unless this opens it
    allow_unauthenticated: bool = False


class AdminSettings(_Model):
    """The web console (`/admin`): off unless `token` is set. It is served by the Keeper: on
    its metrics listener (`worker.metrics_host:metrics_port`) unless `port` gives it a listener
    of its own on `host` (default 127.0.0.1; `port: 0` takes any free port, logged)."""

    token: str = Field(default="", repr=False)
    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("host", "port", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # so `port: ${ADMIN_PORT:-}` can mean unset

    @property
    def enabled(self) -> bool:
        """Whether the console is served (a token is set)."""
        return bool(self.token)

    @property
    def listen_host(self) -> str:
        """The address of the console's own listener (when `port` is set)."""
        return self.host or "127.0.0.1"


class GatewaySettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=55300, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    refresh_interval_sec: float = Field(default=3.0, gt=0)
    selection: Selection = Selection.LEAST_INFLIGHT
    # limits at the edge: what one client may cost the gateway
    client_header_timeout_sec: float = Field(default=10.0, gt=0)  # an incomplete head: dropped
    client_body_timeout_sec: float = Field(default=30.0, gt=0)  # a silent body: 408
    # at a graceful stop, how long pending status changes may wait for the store
    shutdown_drain_timeout_sec: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)  # open client connections, per process
    max_inflight_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # beyond: 503
    # what one upstream answer may cost: a body read whole (not a stream) beyond it is a 502
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    allow_weak_tokens: bool = False  # accept placeholder or short tokens on a public listener
    watch_config: StrictBool = False  # re-read the config file when it changes (and on SIGHUP)
    # /readyz is 503 while no provider has a usable key (healthy, untested, cooling, ejected)
    ready_requires_keys: StrictBool = False
    # client tokens for the whole gateway: route aliases and <provider>/<model> (`routes:`)
    tokens: tuple[GatewayToken, ...] = ()
    # proxies whose X-Forwarded-For is believed (CIDRs; empty: the socket peer is the client)
    trusted_proxies: tuple[str, ...] = ()
    # count every answer's tokens (`llmgateway usage`, llmgateway_tokens_total); off by default:
    # ~13 µs of CPU per chat request, ~25 per stream (README, "Usage accounting")
    token_accounting: StrictBool = False

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_ranges(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks(value)  # raises ValueError naming the bad one
        return value


class LimitsSettings(_Model):
    """Where the per-key limits of `gateway_policy.key_limits` are counted, so that they hold
    across every gateway process. An unreachable backend fails open (logged, counted)."""

    backend: LimitsBackend = LimitsBackend.AUTO
    redis_url: RedisUrl | None = Field(default=None, repr=False)
    key_prefix: str = Field(default="llmgateway", min_length=1)  # Redis keys / PG lock space
    lease_ttl_sec: float = Field(default=30.0, gt=0)  # a dead gateway's slots free after this
    timeout_sec: float = Field(default=0.25, gt=0)  # one Redis call; beyond it: fail open
    retry_unreachable_sec: float = Field(default=5.0, gt=0)  # fail open this long, then retry

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if value == "" else value  # so `redis_url: ${REDIS_URL:-}` can mean unset


class KeyLimits(_Model):
    """Per-key limits across all gateway processes (per key × model unless shared_key_status)."""

    max_concurrent: int | None = Field(default=None, ge=1)  # None: unlimited
    rpm: int | None = Field(default=None, ge=1)  # requests in any 60 s window; None: unlimited
    tpm: int | None = Field(default=None, ge=1)  # tokens in any 60 s window; None: unlimited

    @property
    def enabled(self) -> bool:
        """Is any limit set?"""
        return self.max_concurrent is not None or self.rpm is not None or self.tpm is not None


class ModelSettings(_Model):
    endpoint_suffix: str
    test_payload: dict[str, Any] = Field(default_factory=dict)


class AccessControl(_Model):
    gateway_access_token: str = Field(default="", repr=False)
    gateway_access_tokens: tuple[str, ...] = Field(default=(), repr=False)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token that reaches this provider, the singular one first."""
        single = (self.gateway_access_token,) if self.gateway_access_token else ()
        return single + tuple(
            t for t in self.gateway_access_tokens if t != self.gateway_access_token
        )


class ProxyConfig(_Model):
    mode: ProxyMode = ProxyMode.NONE
    static_url: ProxyUrl | None = Field(default=None, repr=False)
    pool_list_path: Path | None = None


class Timeouts(_Model):
    connect: float = Field(default=5.0, gt=0)
    read: float = Field(default=20.0, gt=0)
    write: float = Field(default=10.0, gt=0)
    pool: float = Field(default=5.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class FirstCheckPolicy(_Model):
    """How fast untested keys get their first check (the models-list call, which spends no
    tokens): up to `concurrency` calls at once, at an adaptive rate per provider that starts at
    `start_rate` calls/s, grows by `rate_step` calls/s per second while answers are fine, is cut
    by `decrease_factor` on a 429 or 503 (and paused until its Retry-After), and stays within
    [`min_rate`, `max_rate`]."""

    concurrency: int = Field(default=50, ge=1, le=1000)
    start_rate: float = Field(default=20.0, gt=0)
    min_rate: float = Field(default=1.0, gt=0)
    max_rate: float = Field(default=1000.0, gt=0, le=100_000)
    rate_step: float = Field(default=50.0, ge=0)
    decrease_factor: float = Field(default=0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _rates_ordered(self) -> Self:
        if not self.min_rate <= self.start_rate <= self.max_rate:
            raise ValueError("first_check needs min_rate <= start_rate <= max_rate")
        return self


class HealthPolicy(_Model):
    on_server_error_min: int = Field(default=30, ge=1)
    on_overload_min: int = Field(default=60, ge=1)
    on_other_error_hr: int = Field(default=1, ge=1)
    on_success_hr: int = Field(default=1, ge=1)
    on_rate_limit_hr: int = Field(default=4, ge=1)
    on_no_quota_hr: int = Field(default=4, ge=1)
    on_invalid_key_days: int = Field(default=10, ge=1)
    on_no_access_days: int = Field(default=10, ge=1)
    quarantine_after_days: int = Field(default=30, ge=1)
    quarantine_recheck_interval_days: int = Field(default=10, ge=1)
    stop_checking_after_days: int = Field(default=90, ge=1)
    amnesty_threshold_days: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=30, ge=1)
    batch_delay_sec: int = Field(default=15, ge=0)
    task_timeout_sec: int = Field(default=900, ge=1)
    verification_attempts: int = Field(default=3, ge=0)
    verification_delay_sec: int = Field(default=65, ge=60)
    fast_status_mapping: dict[StatusCode, ErrorReason] = Field(default_factory=dict)
    first_check: FirstCheckPolicy = FirstCheckPolicy()


class ErrorParsingRule(_Model):
    status_code: int = Field(ge=400, le=599)
    error_path: str = Field(min_length=1)
    match_pattern: Annotated[str, Field(min_length=1), AfterValidator(_check_regex)]
    map_to: ErrorReason
    priority: int = 0
    description: str = ""


class ErrorParsing(_Model):
    enabled: bool = False
    rules: tuple[ErrorParsingRule, ...] = ()


class RetryStep(_Model):
    # tries that may fail in this class, each on another key (0 or 1: no retry after one)
    attempts: int = Field(default=0, ge=0)
    backoff_sec: float = Field(default=0.1, ge=0)
    backoff_factor: float = Field(default=1.5, ge=1)


class RetryPolicy(_Model):
    """Retries on another key. On by default (the original's default was off): failing over
    is the gateway's promise, and a key's fault costs the client nothing."""

    enabled: bool = True
    on_key_error: RetryStep = RetryStep(attempts=6, backoff_sec=0.0)
    on_server_error: RetryStep = RetryStep(attempts=3, backoff_sec=0.1)


class BreakerBackoff(_Model):
    base_duration_sec: float = Field(default=30, gt=0)
    max_duration_sec: float = Field(default=1800, gt=0)
    factor: float = Field(default=2.0, ge=1)


class CircuitBreakerSettings(_Model):
    enabled: bool = False
    mode: BreakerMode = BreakerMode.AUTO_RECOVERY
    failure_threshold: int = Field(default=10, ge=1)
    backoff: BreakerBackoff = BreakerBackoff()
    jitter_sec: float = Field(default=5, ge=0)
    trial_calls: int = Field(default=3, ge=1)  # calls let through at once while half-open


class EgressRateLimit(_Model):
    """Egress-wide 429s: when, within `window_sec`, at least `min_keys` distinct keys got a 429
    through one egress (direct, or one proxy) and 429s are at least `ratio` of its answers, the
    egress cools down for `cooldown_sec` instead of each key."""

    enabled: bool = True
    window_sec: float = Field(default=10, gt=0)
    min_keys: int = Field(default=5, ge=2)
    ratio: float = Field(default=0.8, gt=0, le=1)
    cooldown_sec: float = Field(default=30, gt=0)


class OutlierDetection(_Model):
    """Passive health of keys in the gateway (Envoy's outlier detection) and 429 cooldowns.

    After `consecutive_failures` provider-side failures in a row a key is ejected for
    `base_ejection_sec × n` (n = ejections in a row, decaying while healthy), capped at
    `max_ejection_sec`, ±`jitter_percent`; never more than `max_ejection_percent` of the keys at
    once. A 429 naming no delay cools its scope for `default_cooldown_sec × 2^(k−1)` (k = 429s in
    a row), capped at `max_cooldown_sec`; quota exhaustion for `no_quota_cooldown_sec` unless the
    Keeper restores the key sooner.
    """

    consecutive_failures: int = Field(default=5, ge=1)
    base_ejection_sec: float = Field(default=30, gt=0)
    max_ejection_sec: float = Field(default=300, gt=0)
    max_ejection_percent: float = Field(default=50, ge=0, le=100)
    jitter_percent: float = Field(default=10, ge=0, lt=100)
    default_cooldown_sec: float = Field(default=60, gt=0)
    max_cooldown_sec: float = Field(default=300, gt=0)
    no_quota_cooldown_sec: float = Field(default=3600, gt=0)


class RetryBudgetSettings(_Model):
    """Retries in flight ≤ max(`min_concurrent`, `percent`% of active requests) (Envoy)."""

    percent: float = Field(default=20, ge=0, le=100)
    min_concurrent: int = Field(default=3, ge=0)


class GatewayPolicy(_Model):
    streaming_mode: StreamingMode = StreamingMode.AUTO
    stream_usage: StreamUsage = StreamUsage.AUTO  # ask streams for their usage (see StreamUsage)
    # false: a key still `untested` (no probe or request has classified it) is not served
    serve_untested_keys: bool = True
    debug_mode: DebugMode = DebugMode.DISABLED
    fast_status_mapping: dict[StatusCode, ErrorReason] = Field(default_factory=dict)
    error_parsing: ErrorParsing = ErrorParsing()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    outlier_detection: OutlierDetection = OutlierDetection()
    retry_budget: RetryBudgetSettings = RetryBudgetSettings()
    egress_rate_limit: EgressRateLimit = EgressRateLimit()
    key_limits: KeyLimits = KeyLimits()  # fleet-wide; counted where `limits` says
    # routes forwarded besides the provider type's own (`[METHOD ]/path`, `*` = one segment)
    allowed_routes: tuple[str, ...] = ()


class _ProviderBase(_Model):
    enabled: bool = True
    keys_path: Path
    api_base_url: HttpUrl
    default_model: str
    shared_key_status: bool = False
    models: dict[str, ModelSettings] = Field(min_length=1)
    access_control: AccessControl = AccessControl()
    proxy_config: ProxyConfig = ProxyConfig()
    timeouts: Timeouts = Timeouts()
    worker_health_policy: HealthPolicy = HealthPolicy()
    gateway_policy: GatewayPolicy = GatewayPolicy()


class OpenAILikeProvider(_ProviderBase):
    """An OpenAI-compatible API (OpenAI, DeepSeek, OpenRouter, vLLM…); `api_base_url`
    carries its version segment, e.g. `https://api.openai.com/v1`."""

    provider_type: Literal["openai_like"]


class GeminiProvider(_ProviderBase):
    """Google Gemini (`api_base_url` = `https://generativelanguage.googleapis.com`)."""

    provider_type: Literal["gemini"]


class AnthropicProvider(_ProviderBase):
    """Anthropic's Messages API (`api_base_url` = `https://api.anthropic.com/v1`); OpenAI-format
    requests go to its OpenAI-compatible endpoint under the same base."""

    provider_type: Literal["anthropic"]


ProviderSettings = Annotated[
    OpenAILikeProvider | GeminiProvider | AnthropicProvider, Field(discriminator="provider_type")
]


class Settings(_Model):
    """The whole configuration file."""

    database: DatabaseSettings = DatabaseSettings()
    logging: LoggingSettings = LoggingSettings()
    worker: WorkerSettings = WorkerSettings()
    usage: UsageSettings = UsageSettings()
    metrics: MetricsSettings = MetricsSettings()
    gateway: GatewaySettings = GatewaySettings()
    limits: LimitsSettings = LimitsSettings()
    admin: AdminSettings = AdminSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    routes: dict[str, RouteSettings] = Field(default_factory=dict)  # model aliases over providers
