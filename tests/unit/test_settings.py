"""Loading and validating the config file: substitution, plain-worded errors with exact dotted
paths, every business rule, the examples, and the database URL."""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from tests.helpers import PG_URL

from llmgateway.config.load import config_path, load_settings
from llmgateway.config.problems import ConfigError, Problem
from llmgateway.config.settings import DatabaseSettings, GeminiProvider, Settings, StreamingMode
from llmgateway.core.outcomes import ErrorReason

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "LLMGATEWAY_TOKEN": "tok-minimal-000000000000",
    "GEMINI_GATEWAY_TOKEN": "tok-gemini-111111111111",
    "DEEPSEEK_GATEWAY_TOKEN": "tok-deepseek-2222222222",
    "APP_GATEWAY_TOKEN": "tok-app-33333333333333",
    "ANTHROPIC_GATEWAY_TOKEN": "tok-anthropic-44444444444",
}
GEMINI_TOKEN = "tok-gemini-aaaaaaaaaaaaaaaa"
OPENAI_TOKEN = "tok-openai-bbbbbbbbbbbbbbbb"


def gemini(**changes: Any) -> dict[str, Any]:
    """A valid Gemini provider, with `changes` merged in (`a__b=x` sets a.b)."""
    return _merged(
        {
            "provider_type": "gemini",
            "keys_path": "keys/gemini",
            "api_base_url": "https://generativelanguage.googleapis.com",
            "default_model": "gemini-2.5-flash",
            "models": {"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
            "access_control": {"gateway_access_token": GEMINI_TOKEN},
        },
        changes,
    )


def openai(**changes: Any) -> dict[str, Any]:
    return _merged(
        {
            "provider_type": "openai_like",
            "keys_path": "keys/openai",
            "api_base_url": "https://api.openai.com/v1",
            "default_model": "gpt-4o-mini",
            "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
            "access_control": {"gateway_access_token": OPENAI_TOKEN},
        },
        changes,
    )


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return result


def write(tmp_path: Path, content: str | dict[str, Any]) -> Path:
    path = tmp_path / "providers.yaml"
    body = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(body, encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> dict[str, Problem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=env or {})
    return {p.path: p for p in caught.value.problems}


def only_problem(tmp_path: Path, content: str | dict[str, Any]) -> Problem:
    found = problems(write(tmp_path, content))
    assert len(found) == 1, found
    return next(iter(found.values()))


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "providers"),
    [
        ("examples/minimal_config.yaml", ["openai"]),
        ("examples/full_config.yaml", ["gemini-production", "deepseek-main", "anthropic-main"]),
        ("config/providers.yaml", ["openai", "gemini"]),
    ],
)
def test_shipped_configs_validate(name: str, providers: list[str]) -> None:
    settings = load_settings(ROOT / name, environ=EXAMPLE_ENV)
    assert list(settings.providers) == providers
    assert settings.database.backend == "sqlite"


def test_full_config_shows_its_gemini_features() -> None:
    provider = load_settings(ROOT / "examples/full_config.yaml", environ=EXAMPLE_ENV).providers[
        "gemini-production"
    ]
    assert isinstance(provider, GeminiProvider)
    assert len(provider.models) >= 2
    assert provider.gateway_policy.error_parsing.rules[0].map_to is ErrorReason.INVALID_KEY
    assert provider.gateway_policy.retry.on_key_error.attempts == 3
    assert provider.access_control.tokens == (EXAMPLE_ENV["GEMINI_GATEWAY_TOKEN"],)


def _schema_paths(tp: Any, prefix: str) -> set[str]:
    """Every setting's dotted path; `*` stands for a mapping key or a list position."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _schema_paths(args[0], prefix)
    if origin in (Union, types.UnionType):
        return set().union(*(_schema_paths(m, prefix) for m in args))
    if origin in (tuple, list):
        return _schema_paths(args[0], f"{prefix}.*")
    if origin is dict:
        return _schema_paths(args[1], f"{prefix}.*")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        paths: set[str] = set()
        for name, field in tp.model_fields.items():
            here = f"{prefix}.{name}".lstrip(".")
            paths |= {here} | _schema_paths(field.annotation, here)
        return paths
    return set()


def _data_paths(node: Any, prefix: str, schema: set[str]) -> set[str]:
    if not isinstance(node, dict | list):
        return set()
    items = node.items() if isinstance(node, dict) else enumerate(node)
    paths: set[str] = set()
    for key, value in items:
        here = f"{prefix}.{key}".lstrip(".")
        if here not in schema:  # a mapping key or a list position
            here = f"{prefix}.*".lstrip(".")
        paths |= {here} | _data_paths(value, here, schema)
    return paths


def test_full_config_has_every_setting() -> None:
    """Whoever adds a setting adds it, with a comment, to examples/full_config.yaml."""
    schema = _schema_paths(Settings, "")
    assert "providers.*.gateway_policy.error_parsing.rules.*.map_to" in schema
    data = yaml.safe_load((ROOT / "examples/full_config.yaml").read_text())
    missing = schema - _data_paths(data, "", schema)
    assert not missing, f"add these to examples/full_config.yaml: {sorted(missing)}"


def test_minimal_config_is_minimal() -> None:
    data = yaml.safe_load((ROOT / "examples/minimal_config.yaml").read_text())
    assert list(data) == ["providers"]
    assert len(data["providers"]) == 1


# -- ${VAR} substitution ---------------------------------------------------------------------

ENV_CONFIG = """
database:
  port: ${DB_PORT}
  host: ${DB_HOST:-db.internal}
  user: "${DB_USER:-gateway}"
gateway:
  port: ${GW_PORT:-8080}
providers:
  g:
    provider_type: gemini
    keys_path: ${KEYS_ROOT}/gemini
    api_base_url: https://generativelanguage.googleapis.com
    default_model: m
    models:
      m:
        endpoint_suffix: :generateContent
        test_payload:
          n: ${N}
          quoted: "${N}"
          price: $${NOT_A_VAR}
    access_control:
      gateway_access_token: ${TOKEN}
"""


def test_substitution_types_unquoted_values_and_uses_defaults(tmp_path: Path) -> None:
    env = {"DB_PORT": "6543", "KEYS_ROOT": "/srv/keys", "N": "7", "TOKEN": GEMINI_TOKEN}
    settings = load_settings(write(tmp_path, ENV_CONFIG), env)
    assert settings.database.port == 6543
    assert settings.database.host == "db.internal"
    assert settings.database.user == "gateway"
    assert settings.gateway.port == 8080
    provider = settings.providers["g"]
    assert provider.keys_path == Path("/srv/keys/gemini")
    # free-form data keeps YAML's typing: unquoted 7 is a number, quoted "7" is text
    assert provider.models["m"].test_payload == {"n": 7, "quoted": "7", "price": "${NOT_A_VAR}"}
    assert provider.access_control.gateway_access_token == GEMINI_TOKEN


def test_default_applies_when_variable_is_empty(tmp_path: Path) -> None:
    env = {"DB_PORT": "1", "GW_PORT": "", "KEYS_ROOT": "k", "N": "1", "TOKEN": GEMINI_TOKEN}
    assert load_settings(write(tmp_path, ENV_CONFIG), env).gateway.port == 8080


def test_missing_variables_are_named_with_their_paths(tmp_path: Path) -> None:
    found = problems(write(tmp_path, ENV_CONFIG), {"KEYS_ROOT": "k", "N": "1"})
    assert set(found) == {"database.port", "providers.g.access_control.gateway_access_token"}
    assert str(found["database.port"]) == (
        "database.port: environment variable DB_PORT is not set "
        "(export DB_PORT=..., set it in .env, or give a default: ${DB_PORT:-value})"
    )
    assert "TOKEN" in found["providers.g.access_control.gateway_access_token"].message


def test_malformed_reference_is_reported(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, 'logging:\n  level: "${LEVEL"\n')
    assert problem.path == "logging.level"
    assert problem.message == "malformed variable reference '${LEVEL'"


# -- reading and YAML -------------------------------------------------------------------------


def test_broken_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  g:\n    keys_path: k\n   api_base_url: [\n")
    problem = only_problem(tmp_path, path.read_text())
    assert problem.path == f"{path}:4:4"
    assert problem.message.startswith("invalid YAML: ")


def test_tabs_get_a_specific_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gateway:\n\tport: 1\n")
    assert problem.path.endswith("providers.yaml:2:1")
    assert problem.hint == "YAML indents with spaces, not tabs"


def test_unquoted_reference_in_flow_mapping_gets_a_quoting_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gateway: {port: ${PORT}}\n")
    assert problem.path.endswith(":1:18")
    assert "quote" in problem.hint


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "gateway:\n  port: 1\ngateway:\n  port: 2\n")
    assert problem.path.endswith("providers.yaml:3:1")
    assert problem.message == "duplicate key 'gateway'"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert str(next(iter(problems(path).values()))).startswith(f"{path}: config file not found (")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping of sections, not list"),
        ("just text\n", "the top level must be a mapping of sections, not text"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, content: str, message: str) -> None:
    assert only_problem(tmp_path, content).message == message


def test_bom_and_crlf_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfgateway:\r\n  port: 9000\r\n")
    assert load_settings(path, environ={}).gateway.port == 9000


def test_config_path_precedence() -> None:
    assert config_path("a.yaml", {"LLMGATEWAY_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert config_path(None, {"LLMGATEWAY_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert config_path(None, {}) == Path("config/providers.yaml")


# -- plain words for pydantic errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"providers": {"gemini": gemini(timeouts={"conect": 3})}},
            "providers.gemini.timeouts.conect: unknown setting (did you mean 'connect'?)",
        ),
        (
            {"provders": {}},
            "provders: unknown setting (did you mean 'providers'?)",
        ),
        (
            {"metrics": {"zzz": 1}},
            "metrics.zzz: unknown setting "
            "(valid here: enabled, access_token, allow_unauthenticated)",
        ),
        (
            {"gateway": {"port": "eighty"}},
            "gateway.port: expected a whole number, got 'eighty' (digits only, e.g. 30)",
        ),
        (
            {"gateway": {"port": 70000}},
            "gateway.port: must be at most 65535, got 70000 (default: 55300)",
        ),
        (
            {"logging": {"level": "LOUD"}},
            "logging.level: 'LOUD' is not allowed "
            "(use one of: 'DEBUG', 'INFO', 'WARNING' or 'ERROR')",
        ),
        (
            {"providers": {"g": gemini(gateway_policy={"streaming_mode": "maybe"})}},
            "providers.g.gateway_policy.streaming_mode: 'maybe' is not allowed "
            "(use one of: 'auto' or 'disabled')",
        ),
        (
            {"providers": {"g": gemini(provider_type="claude")}},
            "providers.g.provider_type: unknown provider_type 'claude' (did you mean 'anthropic'?)",
        ),
        (
            {"providers": {"g": {k: v for k, v in gemini().items() if k != "provider_type"}}},
            "providers.g.provider_type: provider_type is missing "
            "(use one of: 'openai_like', 'gemini', 'anthropic')",
        ),
        (
            {"providers": {"g": gemini(provider_type="gemni")}},
            "providers.g.provider_type: unknown provider_type 'gemni' (did you mean 'gemini'?)",
        ),
        (
            {"providers": {"g": gemini(keys_path=None)}},
            "providers.g.keys_path: expected a file or folder path, got an empty value "
            "(e.g. keys/gemini)",
        ),
        (
            {"metrics": {"enabled": "sometimes"}},
            "metrics.enabled: expected true or false, got 'sometimes' (write true or false)",
        ),
        (
            {"gateway": []},
            "gateway: expected a mapping, got a list (indent 'name: value' lines under it)",
        ),
        (  # strict: no "yes", "on" or 1 for the access log
            {"logging": {"access": "yes"}},
            "logging.access: expected true or false, got 'yes' (write true or false)",
        ),
        (
            {"logging": {"access": 1}},
            "logging.access: expected true or false, got 1 (write true or false)",
        ),
    ],
)
def test_pydantic_errors_in_plain_words(
    tmp_path: Path, content: dict[str, Any], expected: str
) -> None:
    assert str(only_problem(tmp_path, content)) == expected


def test_required_setting_missing(tmp_path: Path) -> None:
    provider = gemini()
    del provider["api_base_url"]
    problem = only_problem(tmp_path, {"providers": {"g": provider}})
    assert (problem.path, problem.message) == (
        "providers.g.api_base_url",
        "required setting is missing",
    )


# -- business rules ------------------------------------------------------------------------------

HEALTH = "providers.g.worker_health_policy"
POLICY = "providers.g.gateway_policy"


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        (
            {"worker_health_policy__verification_delay_sec": 59},
            f"{HEALTH}.verification_delay_sec",
            "must be at least 60, got 59",
        ),
        (
            {"worker_health_policy__quarantine_after_days": 91},
            f"{HEALTH}.quarantine_after_days",
            "must not exceed stop_checking_after_days (90)",
        ),
        (
            {"proxy_config__mode": "static"},
            "providers.g.proxy_config.static_url",
            "required when mode is static",
        ),
        (
            {"proxy_config__mode": "stealth"},
            "providers.g.proxy_config.pool_list_path",
            "required when mode is stealth",
        ),
        (
            {"proxy_config__static_url": "ftp://proxy:21"},
            "providers.g.proxy_config.static_url",
            "expected a URL starting with http:// or https:// or socks5:// or socks5h://",
        ),
        (
            {"api_base_url": "generativelanguage.googleapis.com"},
            "providers.g.api_base_url",
            "expected a URL starting with http:// or https://",
        ),
        (
            {"default_model": "gemini-9"},
            "providers.g.default_model",
            "'gemini-9' is not one of the provider's models",
        ),
        ({"models": {}}, "providers.g.models", "must not be empty"),
        (
            {"models": {"gemini-2.5-flash": {"endpoint_suffix": "/generateContent"}}},
            "providers.g.models.gemini-2.5-flash.endpoint_suffix",
            "a Gemini endpoint suffix starts with ':'",
        ),
        (
            {"access_control": {}},
            "providers.g.access_control.gateway_access_token",
            "an enabled provider needs a gateway access token",
        ),
        (
            {"access_control__gateway_access_tokens": [""]},
            "providers.g.access_control.gateway_access_tokens.0",
            "empty token",
        ),
        (
            {"worker_health_policy__fast_status_mapping": {700: "rate_limited"}},
            f"{HEALTH}.fast_status_mapping.700",
            "invalid key: must be at most 599, got 700",
        ),
        (
            {"gateway_policy__fast_status_mapping": {99: "rate_limited"}},
            f"{POLICY}.fast_status_mapping.99",
            "invalid key: must be at least 100, got 99",
        ),
        (
            {"gateway_policy__fast_status_mapping": {429: "slow_down"}},
            f"{POLICY}.fast_status_mapping.429",
            "'slow_down' is not allowed",
        ),
        (
            {"gateway_policy__retry__on_key_error__attempts": -1},
            f"{POLICY}.retry.on_key_error.attempts",
            "must be at least 0, got -1",
        ),
        (
            {"gateway_policy__retry__on_server_error__backoff_factor": 0.5},
            f"{POLICY}.retry.on_server_error.backoff_factor",
            "must be at least 1, got 0.5",
        ),
        (
            {
                "gateway_policy__circuit_breaker__backoff": {
                    "base_duration_sec": 60,
                    "max_duration_sec": 30,
                }
            },
            f"{POLICY}.circuit_breaker.backoff.max_duration_sec",
            "must be at least base_duration_sec (60)",
        ),
        (
            {"gateway_policy__circuit_breaker__failure_threshold": 0},
            f"{POLICY}.circuit_breaker.failure_threshold",
            "must be at least 1, got 0",
        ),
    ],
)
def test_each_rule_names_the_exact_setting(
    tmp_path: Path, changes: dict[str, Any], path: str, message: str
) -> None:
    problem = only_problem(tmp_path, {"providers": {"g": gemini(**changes)}})
    assert problem.path == path
    assert problem.message.startswith(message), problem.message


RULE = {
    "status_code": 400,
    "error_path": "error.status",
    "match_pattern": "x",
    "map_to": "no_quota",
}


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ({"status_code": 302}, "status_code", "must be at least 400, got 302"),
        ({"status_code": 600}, "status_code", "must be at most 599, got 600"),
        ({"error_path": ""}, "error_path", "must not be empty"),
        ({"match_pattern": ""}, "match_pattern", "must not be empty"),
        ({"match_pattern": "(unclosed"}, "match_pattern", "not a valid regular expression"),
        ({"map_to": "nope"}, "map_to", "'nope' is not allowed"),
    ],
)
def test_error_parsing_rules_are_checked(
    tmp_path: Path, rule: dict[str, Any], field: str, message: str
) -> None:
    rules = [RULE, {**RULE, **rule}]
    problem = only_problem(
        tmp_path, {"providers": {"g": gemini(gateway_policy__error_parsing__rules=rules)}}
    )
    assert problem.path == f"{POLICY}.error_parsing.rules.1.{field}"
    assert problem.message.startswith(message)


# -- model patterns and default_model --------------------------------------------------------

GPT41 = {"endpoint_suffix": "/chat/completions"}


def test_default_model_may_be_a_name_a_pattern_matches(tmp_path: Path) -> None:
    provider = openai(default_model="gpt-4.1-mini", models={"gpt-4.1*": GPT41})
    settings = load_settings(write(tmp_path, {"providers": {"o": provider}}), {})
    assert settings.providers["o"].default_model == "gpt-4.1-mini"


def test_default_model_must_be_concrete(tmp_path: Path) -> None:
    provider = openai(default_model="gpt-4.1*", models={"gpt-4.1*": GPT41})
    problem = only_problem(tmp_path, {"providers": {"o": provider}})
    assert (problem.path, problem.message) == (
        "providers.o.default_model",
        "'gpt-4.1*' is a pattern, not a model",
    )
    assert "without * ? [" in problem.hint


def test_default_model_must_be_served(tmp_path: Path) -> None:
    models = {"gpt-4o": GPT41, "gpt-4.1*": GPT41}
    provider = openai(default_model="o3-mini", shared_key_status=True, models=models)
    problem = only_problem(tmp_path, {"providers": {"o": provider}})
    assert (problem.path, problem.message, problem.hint) == (
        "providers.o.default_model",
        "'o3-mini' is neither one of the provider's models nor matched by one of its patterns",
        "use one of: gpt-4o, or a name 'gpt-4.1*' matches",
    )
    only_patterns = openai(default_model="o3-mini", models={"gpt-4.1*": GPT41, "o1*": GPT41})
    found = problems(write(tmp_path, {"providers": {"o": only_patterns}}))
    assert found["providers.o.default_model"].hint == "a name 'gpt-4.1*', 'o1*' matches"


def test_a_pattern_must_match_default_model_unless_status_is_shared(tmp_path: Path) -> None:
    models = {"gpt-4o-mini": GPT41, "gpt-4.1*": GPT41, "*": GPT41}
    provider = openai(default_model="gpt-4o-mini", models=models)
    problem = only_problem(tmp_path, {"providers": {"o": provider}})
    assert (problem.path, problem.message, problem.hint) == (
        "providers.o.models.gpt-4.1*",
        "a pattern is probed through default_model, and 'gpt-4o-mini' does not match it",
        "set shared_key_status: true, or a default_model the pattern matches",
    )
    for fixed in (
        openai(default_model="gpt-4o-mini", models=models, shared_key_status=True),
        openai(default_model="gpt-4.1-nano", models=models),
    ):
        settings = load_settings(write(tmp_path, {"providers": {"o": fixed}}), {})
        assert set(settings.providers["o"].models) == set(models)


def test_pattern_rules_run_when_another_setting_is_broken(tmp_path: Path) -> None:
    provider = openai(default_model="gpt-4o", models={"gpt-4.1*": GPT41}, timeouts={"read": 0})
    assert set(problems(write(tmp_path, {"providers": {"o": provider}}))) == {
        "providers.o.default_model",
        "providers.o.models.gpt-4.1*",
        "providers.o.timeouts.read",
    }


def test_tokens_are_unique_across_enabled_providers(tmp_path: Path) -> None:
    content = {
        "providers": {
            "g": gemini(),
            "o": openai(
                access_control={"gateway_access_tokens": ["tok-other-0123456", GEMINI_TOKEN]}
            ),
            "off": openai(enabled=False, access_control={"gateway_access_token": GEMINI_TOKEN}),
            "o2": openai(access_control={"gateway_access_token": GEMINI_TOKEN}),
        }
    }
    found = problems(write(tmp_path, content))
    assert set(found) == {
        "providers.o.access_control.gateway_access_tokens.1",
        "providers.o2.access_control.gateway_access_token",
    }
    assert found["providers.o2.access_control.gateway_access_token"].message == (
        "token tok-…aaaa is already used by provider 'g'"
    )


def test_a_disabled_provider_needs_no_token(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, {"providers": {"g": gemini(enabled=False, access_control={})}}), {}
    )
    assert not settings.providers["g"].enabled


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    content = {
        "database": {"port": "x"},
        "gateway": {"prot": 1},
        "providers": {
            "g": gemini(
                default_model="absent",
                timeouts={"read": 0},
                worker_health_policy={"quarantine_after_days": 100, "batch_size": 0},
                proxy_config={"mode": "stealth"},
                gateway_policy={"circuit_breaker": {"backoff": {"max_duration_sec": 1}}},
            ),
            "o": openai(access_control={"gateway_access_token": GEMINI_TOKEN}),
        },
    }
    assert set(problems(write(tmp_path, content))) == {
        "database.port",
        "gateway.prot",
        "providers.g.default_model",
        "providers.g.timeouts.read",
        "providers.g.worker_health_policy.quarantine_after_days",
        "providers.g.worker_health_policy.batch_size",
        "providers.g.proxy_config.pool_list_path",
        "providers.g.gateway_policy.circuit_breaker.backoff.max_duration_sec",
        "providers.o.access_control.gateway_access_token",
    }


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    secret_password = "hunter2-very-secret"
    content = {
        "database": {"url": f"mysql://root:{secret_password}@db/x", "password": ["x"]},
        "metrics": {"access_token": {"t": "metrics-secret-token-99"}},
        "providers": {
            "g": gemini(access_control={"gateway_access_tokens": "tok-lonely-secret-777"}),
            "o": openai(),
            "o2": openai(),
        },
    }
    text = "\n".join(map(str, problems(write(tmp_path, content)).values()))
    assert "providers.o2.access_control.gateway_access_token" in text
    for secret in (
        secret_password,
        "metrics-secret-token-99",
        "tok-lonely-secret-777",
        OPENAI_TOKEN,
    ):
        assert secret not in text


def test_secrets_are_hidden_from_repr() -> None:
    database = DatabaseSettings(password="pw-0123456789", url="postgresql://u:pw-0123456789@h/d")
    assert "pw-0123456789" not in repr(database)


# -- the database URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ({}, "sqlite+aiosqlite:///data/llmgateway.db"),
        ({"url": ""}, "sqlite+aiosqlite:///data/llmgateway.db"),
        ({"url": "sqlite:///var/lib/g.db"}, "sqlite+aiosqlite:///var/lib/g.db"),
        ({"url": "sqlite:////abs/g.db"}, "sqlite+aiosqlite:////abs/g.db"),
        ({"url": "postgresql://u:p@h:5/d"}, "postgresql+asyncpg://u:p@h:5/d"),
        ({"url": "postgres://u@h/d"}, "postgresql+asyncpg://u@h/d"),
        ({"url": "postgresql+psycopg://u@h/d"}, "postgresql+psycopg://u@h/d"),
        ({"host": "db"}, "postgresql+asyncpg://llm_gateway@db:5432/llmgateway"),
        (
            {"user": "a b", "password": "p@ss:/w", "port": 6000, "dbname": "x"},
            "postgresql+asyncpg://a%20b:p%40ss%3A%2Fw@localhost:6000/x",
        ),
        ({"url": "sqlite:///u.db", "host": "ignored"}, "sqlite+aiosqlite:///u.db"),
    ],
)
def test_async_url(given: dict[str, Any], url: str) -> None:
    database = DatabaseSettings.model_validate(given)
    assert database.async_url == url
    assert database.backend == url.split("+")[0]


def test_password_survives_url_quoting() -> None:
    url = DatabaseSettings(user="u", password="p@ss:/w").async_url
    assert make_url(url).password == "p@ss:/w"


def test_unsupported_database_url_is_a_problem(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, {"database": {"url": "mysql://db/x"}})
    assert problem.path == "database.url"
    assert problem.message == "expected a sqlite:// or postgresql:// URL"


async def test_sqlite_url_connects(tmp_path: Path) -> None:
    database = DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db")
    engine = create_async_engine(database.async_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("select 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert (tmp_path / "state.db").exists()


@pytest.mark.postgres
async def test_postgres_url_built_from_the_original_fields_connects() -> None:
    server = make_url(PG_URL)
    database = DatabaseSettings(
        host=server.host or "127.0.0.1",
        port=server.port or 5432,
        user=server.username or "postgres",
        password=server.password or "",
        dbname=server.database or "test",
    )
    engine = create_async_engine(database.async_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("select current_database()"))).scalar() == (
                server.database or "test"
            )
    finally:
        await engine.dispose()


def test_settings_are_frozen_and_typed(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {"providers": {"g": gemini()}}), {})
    assert settings.providers["g"].gateway_policy.streaming_mode is StreamingMode.AUTO
    with pytest.raises(ValueError, match="frozen"):
        settings.gateway.port = 1  # type: ignore[misc]


def test_access_log_is_off_by_default_and_takes_true(tmp_path: Path) -> None:
    plain = write(tmp_path, "logging:\n  level: INFO\n")
    assert load_settings(plain, environ={}).logging.access is False
    path = write(tmp_path, "logging:\n  access: ${ACCESS_LOG:-false}\n")
    assert load_settings(path, environ={"ACCESS_LOG": "true"}).logging.access is True
    assert load_settings(path, environ={}).logging.access is False
