"""The original llmGateway's config files pass `check-config` unchanged, with the `.env` its
users keep (fixtures in original_configs/, written in its format and with its structures).

A mapping, list or section given no value (its key with nothing, or only comments, under it) is
empty, as the original's loader took it; a scalar or a provider given no value, and a setting
the original had already removed, are still refused with a clear line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from llmgateway.config.env_file import parse_env_file
from llmgateway.config.load import load_settings
from llmgateway.config.problems import ConfigError
from llmgateway.config.settings import (
    CircuitBreakerSettings,
    ErrorParsing,
    HealthPolicy,
    LoggingSettings,
    ProxyConfig,
    RetryPolicy,
    Settings,
    Timeouts,
    WorkerSettings,
)

HERE = Path(__file__).resolve().parent / "original_configs"
ORIGINAL_ENV = HERE / "original.env"
CONFIGS = {
    "minimal_config.yaml": ["gemini-team"],
    "full_config.yaml": ["gemini-batch", "moonshot"],
    "empty_values.yaml": ["moonshot"],
}


def user_env() -> dict[str, str]:
    """The variables an original user has: those of their .env."""
    return parse_env_file(ORIGINAL_ENV.read_text(), str(ORIGINAL_ENV), {})


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process with exactly `env` (plus what finds Python)."""
    base = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "llmgateway", *args],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def settings(name: str) -> Settings:
    return load_settings(HERE / name, environ=user_env())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_check_config_accepts_the_original_users_files(name: str, tmp_path: Path) -> None:
    """As an upgrading user runs it: their config, their .env in the working directory."""
    (tmp_path / ".env").write_text(ORIGINAL_ENV.read_text())
    done = run_cli("check-config", str(HERE / name), env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    providers = ", ".join(CONFIGS[name])
    assert done.stdout.startswith(f"ok: {len(CONFIGS[name])} provider"), done.stdout
    assert f"({providers}), database: postgresql" in done.stdout


def test_the_database_parts_build_the_url_the_original_built() -> None:
    """`port: ${DB_PORT}` unquoted is a number; the password is quoted into the URL."""
    env = user_env()
    database = settings("minimal_config.yaml").database
    assert database.port == 5432
    password = quote(env["DB_PASSWORD"], safe="")
    assert database.async_url == (
        f"postgresql+asyncpg://llm_gateway:{password}@database:5432/llmgateway"
    )


def test_the_full_config_means_what_it_says() -> None:
    gemini = settings("full_config.yaml").providers["gemini-batch"]
    assert gemini.worker_health_policy.fast_status_mapping == {}  # only comments under it
    assert gemini.worker_health_policy.verification_delay_sec == 61
    assert {code: r.value for code, r in gemini.gateway_policy.fast_status_mapping.items()} == {
        400: "bad_request"
    }
    assert gemini.models["imagen-4.0-generate-001"].endpoint_suffix == ":predict"
    assert gemini.models["imagen-4.0-generate-001"].test_payload == {
        "instances": [{"prompt": "a red square"}]
    }
    rules = gemini.gateway_policy.error_parsing.rules
    assert [(r.status_code, r.priority) for r in rules] == [(400, 5), (429, 0)]
    assert gemini.gateway_policy.circuit_breaker.backoff.max_duration_sec == 900


EMPTY = [
    "worker",
    "logging",
    "providers.moonshot.models.kimi-k2.test_payload",
    "providers.moonshot.access_control.gateway_access_tokens",
    "providers.moonshot.proxy_config",
    "providers.moonshot.timeouts",
    "providers.moonshot.worker_health_policy.fast_status_mapping",
    "providers.moonshot.gateway_policy.fast_status_mapping",
    "providers.moonshot.gateway_policy.error_parsing.rules",
    "providers.moonshot.gateway_policy.retry",
    "providers.moonshot.gateway_policy.circuit_breaker.backoff",
]


def at(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_every_container_given_no_value_is_empty() -> None:
    raw = yaml.safe_load((HERE / "empty_values.yaml").read_text())
    assert [path for path in EMPTY if at(raw, path) is not None] == [], "given no value"
    loaded = settings("empty_values.yaml")
    assert loaded.worker == WorkerSettings()
    assert loaded.logging == LoggingSettings()
    moonshot = loaded.providers["moonshot"]
    assert moonshot.models["kimi-k2"].test_payload == {}
    assert moonshot.access_control.gateway_access_tokens == ()
    assert moonshot.proxy_config == ProxyConfig()
    assert moonshot.timeouts == Timeouts()
    assert moonshot.worker_health_policy == HealthPolicy()
    policy = moonshot.gateway_policy
    assert policy.fast_status_mapping == {}
    assert policy.error_parsing == ErrorParsing()
    assert policy.retry == RetryPolicy()
    assert policy.circuit_breaker == CircuitBreakerSettings()


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=user_env())
    return [str(p) for p in caught.value.problems]


PROVIDER = """
providers:
  moonshot:
    provider_type: openai_like
    keys_path: keys/moonshot
    api_base_url: https://api.moonshot.ai/v1
    default_model: kimi-k2
    models:
      kimi-k2: {endpoint_suffix: /chat/completions}
    access_control: {gateway_access_token: "${MOONSHOT_TOKEN}"}
"""


def test_a_scalar_or_a_provider_given_no_value_is_still_refused(tmp_path: Path) -> None:
    assert problems_of(PROVIDER + "    enabled:\n", tmp_path) == [
        "providers.moonshot.enabled: expected true or false, got an empty value "
        "(write true or false)"
    ]
    assert problems_of("providers:\n  moonshot:\n", tmp_path) == [
        "providers.moonshot: expected a mapping, got an empty value "
        "(indent 'name: value' lines under it)"
    ]


def test_a_setting_the_original_had_renamed_says_what_replaced_it(tmp_path: Path) -> None:
    text = (
        PROVIDER + "    gateway_policy:\n      unsafe_status_mapping:\n        400: bad_request\n"
    )
    assert problems_of(text, tmp_path) == [
        "providers.moonshot.gateway_policy.unsafe_status_mapping: no longer supported, use "
        "gateway_policy.fast_status_mapping (the original renamed it; the same {status: "
        "reason} mapping)"
    ]
