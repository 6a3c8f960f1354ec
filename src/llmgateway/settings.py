"""The configuration (`config/providers.yaml`): typed, frozen, strictly validated.

The original project's schema is accepted as it is; our additions are documented in
`examples/full_config.yaml`. Settings are built once by `load_settings()` and passed down.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmgateway.outcomes import ErrorReason


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamingMode(enum.StrEnum):
    AUTO = "auto"
    DISABLED = "disabled"


class DebugMode(enum.StrEnum):
    DISABLED = "disabled"
    HEADERS_ONLY = "headers_only"
    FULL_BODY = "full_body"


class ProxyMode(enum.StrEnum):
    NONE = "none"
    STATIC = "static"
    STEALTH = "stealth"


class BreakerMode(enum.StrEnum):
    AUTO_RECOVERY = "auto_recovery"
    MANUAL_RESET = "manual_reset"


class Selection(enum.StrEnum):
    LEAST_INFLIGHT = "least_inflight"  # fewest in-flight of two random eligible keys
    ROUND_ROBIN = "round_robin"


class DatabaseSettings(_Model):
    """Where state lives. `url` wins; else host/port/user/password/dbname build a PostgreSQL
    URL when any of them is given; else the embedded SQLite default."""

    url: str | None = None
    host: str = "localhost"
    port: int = 5432
    user: str = "llm_gateway"
    password: str = ""
    dbname: str = "llmgateway"
    pool_size: int = Field(default=5, ge=1, le=100)


class LoggingSettings(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
    dir: Path | None = None  # write rotated files under this folder too


class WorkerSettings(_Model):
    max_concurrent_providers: int = Field(default=10, ge=1)
    sync_interval_sec: float = Field(default=300.0, gt=0)
    probe_interval_sec: float = Field(default=60.0, gt=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)


class MetricsSettings(_Model):
    enabled: bool = True
    access_token: str = ""


class GatewaySettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=55300, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    refresh_interval_sec: float = Field(default=3.0, gt=0)
    selection: Selection = Selection.LEAST_INFLIGHT


class ModelSettings(_Model):
    endpoint_suffix: str
    test_payload: dict[str, Any] = Field(default_factory=dict)


class AccessControl(_Model):
    gateway_access_token: str = ""
    gateway_access_tokens: tuple[str, ...] = ()

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token that reaches this provider, the singular one first."""
        single = (self.gateway_access_token,) if self.gateway_access_token else ()
        return single + tuple(t for t in self.gateway_access_tokens if t != self.gateway_access_token)


class ProxyConfig(_Model):
    mode: ProxyMode = ProxyMode.NONE
    static_url: str | None = None
    pool_list_path: Path | None = None


class Timeouts(_Model):
    connect: float = Field(default=5.0, gt=0)
    read: float = Field(default=20.0, gt=0)
    write: float = Field(default=10.0, gt=0)
    pool: float = Field(default=5.0, gt=0)
    total: float = Field(default=600.0, gt=0)


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
    fast_status_mapping: dict[int, ErrorReason] = Field(default_factory=dict)


class ErrorParsingRule(_Model):
    status_code: int
    error_path: str
    match_pattern: str
    map_to: ErrorReason
    priority: int = 0
    description: str = ""


class ErrorParsing(_Model):
    enabled: bool = False
    rules: tuple[ErrorParsingRule, ...] = ()


class RetryStep(_Model):
    attempts: int = Field(default=0, ge=0)
    backoff_sec: float = Field(default=0.1, ge=0)
    backoff_factor: float = Field(default=1.5, ge=1)


class RetryPolicy(_Model):
    enabled: bool = False
    on_key_error: RetryStep = RetryStep()
    on_server_error: RetryStep = RetryStep()


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


class GatewayPolicy(_Model):
    streaming_mode: StreamingMode = StreamingMode.AUTO
    debug_mode: DebugMode = DebugMode.DISABLED
    fast_status_mapping: dict[int, ErrorReason] = Field(default_factory=dict)
    error_parsing: ErrorParsing = ErrorParsing()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()


class _ProviderBase(_Model):
    enabled: bool = True
    keys_path: Path
    api_base_url: str
    default_model: str
    shared_key_status: bool = False
    models: dict[str, ModelSettings]
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


ProviderSettings = Annotated[
    OpenAILikeProvider | GeminiProvider, Field(discriminator="provider_type")
]


class Settings(_Model):
    """The whole configuration file."""

    database: DatabaseSettings = DatabaseSettings()
    logging: LoggingSettings = LoggingSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    gateway: GatewaySettings = GatewaySettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
