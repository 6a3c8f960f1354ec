"""`llmgateway check-config`: exit codes, output, the config path rules, secrets, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmgateway.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-check-config-0123456789"
SECRET_PASSWORD = "pg-password-never-print-me"

GOOD = f"""
providers:
  gemini:
    provider_type: gemini
    keys_path: keys/gemini
    api_base_url: https://generativelanguage.googleapis.com
    default_model: gemini-2.5-flash
    models:
      gemini-2.5-flash: {{endpoint_suffix: ":generateContent"}}
    access_control: {{gateway_access_token: {TOKEN}}}
  openai:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    access_control: {{gateway_access_token: "${{OPENAI_TOKEN}}"}}
"""

BAD = f"""
database:
  url: mysql://root:{SECRET_PASSWORD}@db/llm
gateway:
  prot: 8080
providers:
  gemini:
    provider_type: gemini
    keys_path: keys/gemini
    api_base_url: https://generativelanguage.googleapis.com
    default_model: gemini-2.5-flash
    models:
      gemini-2.5-flash: {{endpoint_suffix: ":generateContent"}}
    access_control: {{gateway_access_token: {TOKEN}}}
    timeouts: {{conect: 3}}
  copy:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    access_control: {{gateway_access_tokens: [{TOKEN}]}}
"""
BAD_LINES = [
    "database.url: expected a sqlite:// or postgresql:// URL "
    "(e.g. sqlite:///data/llmgateway.db or postgresql://user:pass@host:5432/db)",
    "gateway.prot: unknown setting (did you mean 'port'?)",
    "providers.gemini.timeouts.conect: unknown setting (did you mean 'connect'?)",
    "providers.copy.access_control.gateway_access_tokens.0: token tok-…6789 is already used by "
    "provider 'gemini' (each token selects one provider; give every enabled provider its own)",
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(folder: Path, text: str, name: str = "providers.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_exits_0_with_a_summary(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = runner.invoke(
        main, ["check-config", str(path)], env={"OPENAI_TOKEN": "tok-o-0123456789abcdef"}
    )
    assert result.exit_code == 0
    assert result.stdout == "ok: 2 providers (gemini, openai), database: sqlite\n"
    assert result.stderr == ""


def test_weak_tokens_are_warnings_naming_the_setting_not_the_value(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, GOOD + "metrics: {access_token: change-me-metrics}\n")
    result = runner.invoke(main, ["check-config", str(path)], env={"OPENAI_TOKEN": "tok-o-1234"})
    assert result.exit_code == 0
    assert result.stdout == "ok: 2 providers (gemini, openai), database: sqlite\n"
    way_out = (
        "set a long random token: python -c 'import secrets; print(secrets.token_urlsafe(32))', "
        "or set gateway.allow_weak_tokens: true to accept it on purpose"
    )
    assert result.stderr.splitlines() == [
        "warning: providers.openai.access_control.gateway_access_token: a token of 10 "
        f"characters, at least 16 needed, refused off loopback; {way_out}",
        f"warning: metrics.access_token: a placeholder token, refused off loopback; {way_out}",
    ]
    assert "tok-o-1234" not in result.output
    assert "change-me-metrics" not in result.output
    allowed = write(tmp_path, path.read_text() + "gateway: {allow_weak_tokens: true}\n")
    quiet = runner.invoke(main, ["check-config", str(allowed)], env={"OPENAI_TOKEN": "tok-o-1234"})
    assert (quiet.exit_code, quiet.stderr) == (0, "")


UNREACHABLE = f"""
providers:
  gemini:
    provider_type: gemini
    keys_path: keys/gemini
    api_base_url: https://generativelanguage.googleapis.com
    default_model: gemini-2.5-flash
    models:
      gemini-2.5-flash: {{endpoint_suffix: ":generateContent"}}
      models/gemini-2.5-pro: {{endpoint_suffix: ":generateContent"}}
      "gemini-*": {{endpoint_suffix: ":generateContent"}}
      tunedModels/mine: {{endpoint_suffix: ":generateContent"}}
      "gemini 3": {{endpoint_suffix: ":generateContent"}}
      imagen-4: {{endpoint_suffix: ":predict/../../files"}}
    shared_key_status: true
    access_control: {{gateway_access_token: {TOKEN}}}
  openai:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
      whisper-1: {{endpoint_suffix: audio/transcriptions}}
      odd: {{endpoint_suffix: "/chat/completions?x=1"}}
      "gpt-4o*": {{endpoint_suffix: /responses}}
    access_control: {{gateway_access_token: tok-o-0123456789abcdef}}
"""


def test_models_no_route_reaches_are_warnings(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", str(write(tmp_path, UNREACHABLE))])
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 2 providers (gemini, openai), database: sqlite\n"
    segment = (
        "a Gemini model is one path segment of RFC 3986 characters (no '/' or ':' after a "
        "leading 'models/'): no native route reaches it"
    )
    not_forwarded = (
        "is not a path the gateway forwards (a '/…' path of RFC 3986 characters, without "
        "dot-segments): no route reaches it"
    )
    assert result.stderr.splitlines() == [
        f"warning: providers.gemini.models.tunedModels/mine: {segment}",
        f"warning: providers.gemini.models.gemini 3: {segment}",
        "warning: providers.gemini.models.imagen-4.endpoint_suffix: ':predict/../../files' "
        "makes a path the gateway does not forward (RFC 3986 characters only, no "
        "dot-segments): no route reaches this model",
        f"warning: providers.openai.models.whisper-1.endpoint_suffix: 'audio/transcriptions' "
        f"{not_forwarded}",
        f"warning: providers.openai.models.odd.endpoint_suffix: '/chat/completions?x=1' "
        f"{not_forwarded}",
    ]


def test_postgres_summary_and_singular(runner: CliRunner, tmp_path: Path) -> None:
    text = GOOD.split("  openai:")[0] + "database: {host: db.internal}\n"
    result = runner.invoke(main, ["check-config", str(write(tmp_path, text))])
    assert result.exit_code == 0
    assert result.stdout == "ok: 1 provider (gemini), database: postgresql\n"


def test_pooler_settings_are_summed_up_and_checked(runner: CliRunner, tmp_path: Path) -> None:
    one = GOOD.split("  openai:")[0]
    pooled = one + (
        "database:\n  url: postgresql://gw@pgbouncer:6432/llm\n"
        f"  direct_url: postgresql://gw:{SECRET_PASSWORD}@db:5432/llm\n"
        "  pooler: pgbouncer_transaction\n"
    )
    result = runner.invoke(main, ["check-config", str(write(tmp_path, pooled))])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "ok: 1 provider (gemini), database: postgresql "
        "(pooler: pgbouncer_transaction, direct_url set)\n"
    )
    wrong = one + (
        "database:\n  url: sqlite:///data/x.db\n"
        f"  direct_url: postgresql://gw:{SECRET_PASSWORD}@db:5432/llm\n"
        "  pooler: pgbouncer_session\n"
    )
    result = runner.invoke(main, ["check-config", str(write(tmp_path, wrong))])
    assert result.exit_code == 2
    assert SECRET_PASSWORD not in result.output
    assert result.stderr.splitlines() == [
        "database.direct_url: only applies when database.url is PostgreSQL, but database.url "
        "is SQLite (remove direct_url, or point database.url at PostgreSQL (or its pooler))",
        "database.pooler: pgbouncer_session describes a PostgreSQL pooler, but database.url is "
        "SQLite (remove pooler, or point database.url at the pooler)",
    ]
    odd = one + "database:\n  url: postgresql://db/llm\n  direct_url: sqlite:///x.db\n"
    result = runner.invoke(main, ["check-config", str(write(tmp_path, odd))])
    assert result.exit_code == 2
    assert result.stderr.startswith("database.direct_url: must be a postgresql:// URL")


def test_every_problem_goes_to_stderr_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", str(write(tmp_path, BAD))])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == BAD_LINES


RETIRED_LINE = (
    "providers.openai.gateway_policy.max_inflight_per_key: no longer supported, use "
    "gateway_policy.key_limits.max_concurrent (it counts per key, or per key × model unless "
    "shared_key_status; with limits.backend: local it counts in each gateway process, as "
    "max_inflight_per_key did)"
)


@pytest.mark.parametrize("command", ["check-config", "gateway", "serve", "worker"])
def test_a_removed_setting_names_what_replaces_it(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    retired = GOOD + "    gateway_policy: {max_inflight_per_key: 4}\n"
    path = write(tmp_path, retired)
    args = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    result = runner.invoke(main, args, env={"OPENAI_TOKEN": "tok-o-0123456789abcdef"})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [RETIRED_LINE]


def test_secrets_are_never_printed(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", str(write(tmp_path, BAD))])
    assert result.exit_code == 2
    for secret in (SECRET_PASSWORD, TOKEN):
        assert secret not in result.output


def test_unset_variable_is_named(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", str(write(tmp_path, GOOD))], env={})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "providers.openai.access_control.gateway_access_token: environment variable "
        "OPENAI_TOKEN is not set (export OPENAI_TOKEN=..., set it in .env, or give a default: "
        "${OPENAI_TOKEN:-value})"
    ]


def test_path_from_environment(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "elsewhere.yaml")
    env = {"LLMGATEWAY_CONFIG": str(path), "OPENAI_TOKEN": "tok-o-0123456789abcdef"}
    result = runner.invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 2 providers")


def test_default_path(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["check-config"], env={"LLMGATEWAY_CONFIG": ""})
    assert result.exit_code == 2
    assert result.stderr.startswith("config/providers.yaml: config file not found (")
    write(tmp_path / "config", GOOD.split("  openai:")[0])
    assert runner.invoke(main, ["check-config"], env={"LLMGATEWAY_CONFIG": ""}).exit_code == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"gateway:\n  port: [1\n", ":3:1: invalid YAML: "),
        (b"\xff\xfe not text", ": not UTF-8 text (byte 0) (save it as UTF-8)"),
        (b"- just\n- a list\n", ": the top level must be a mapping of sections, not list"),
    ],
)
def test_bad_files_never_show_a_traceback(
    runner: CliRunner, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}{expected}")
    assert "Traceback" not in result.output


def test_a_folder_is_not_a_config(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{tmp_path}: is a folder, not a config file (")


def test_as_a_real_process(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "llmgateway", "check-config"]
    env = {**os.environ, "LLMGATEWAY_TOKEN": "tok-minimal-000000000000"}
    ok = subprocess.run(
        [*command, str(ROOT / "examples/minimal_config.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0,
        "ok: 1 provider (openai), database: sqlite\n",
        "",
    )
    bad = subprocess.run(
        [*command, str(write(tmp_path, BAD))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.splitlines() == BAD_LINES
    assert SECRET_PASSWORD not in bad.stderr


SIX_PROBLEMS = f"""
gateway:
  port: 70000
providers:
  openai:
    provder_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    worker_health_policy: {{batch_size: 0}}
    access_control: {{gateway_access_token: {TOKEN}-openai}}
  gemini:
    provider_type: gemini
    keys_pth: keys/gemini
    api_base_url: https://generativelanguage.googleapis.com
    default_model: gemini-2.5-flash
    models:
      gemini-2.5-flash: {{endpoint_suffix: /generateContent}}
    access_control: {{gateway_access_token: {TOKEN}}}
"""
SIX_LINES = [
    "gateway.port: must be at most 65535, got 70000 (default: 55300)",
    "providers.openai.worker_health_policy.batch_size: must be at least 1, got 0 (default: 30)",
    "providers.openai.provder_type: unknown setting (did you mean 'provider_type'?)",
    "providers.gemini.keys_pth: unknown setting (did you mean 'keys_path'?)",
    "providers.openai.default_model: 'gpt-4o' is not one of the provider's models "
    "(use one of: gpt-4o-mini)",
    "providers.gemini.models.gemini-2.5-flash.endpoint_suffix: a Gemini endpoint suffix starts "
    "with ':' (e.g. ':generateContent' or ':predict')",
]


def test_a_provider_type_typo_hides_no_other_problem(runner: CliRunner, tmp_path: Path) -> None:
    """Six problems, one run: the misspelt provider_type is named with the setting it means
    (not as a missing provider_type), and the rest of its provider and the other provider are
    still checked; the misspelt keys_path is not also reported as missing."""
    result = runner.invoke(main, ["check-config", "--config", str(write(tmp_path, SIX_PROBLEMS))])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == SIX_LINES


def test_an_unknown_provider_type_hides_no_other_problem(runner: CliRunner, tmp_path: Path) -> None:
    """The value misspelt: the provider is checked as the type it most likely means (the
    Gemini-only rule on endpoint_suffix applies), and the type is one problem of its own."""
    text = SIX_PROBLEMS.replace("provider_type: gemini", "provider_type: gemni")
    result = runner.invoke(main, ["check-config", str(write(tmp_path, text))])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        *SIX_LINES[:3],
        "providers.gemini.provider_type: unknown provider_type 'gemni' (did you mean 'gemini'?)",
        *SIX_LINES[3:],
    ]
    unknown = text.replace("provider_type: gemni", "provider_type: bedrock")
    result = runner.invoke(main, ["check-config", str(write(tmp_path, unknown))])
    assert "providers.gemini.provider_type: unknown provider_type 'bedrock' (use one of: " in (
        result.stderr
    )
    assert "providers.gemini.keys_pth: unknown setting" in result.stderr
    claude = text.replace("provider_type: gemni", "provider_type: claude")
    result = runner.invoke(main, ["check-config", str(write(tmp_path, claude))])
    assert "unknown provider_type 'claude' (did you mean 'anthropic'?)" in result.stderr


def test_config_option_like_every_command(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"OPENAI_TOKEN": "tok-o-0123456789abcdef"}
    for args in (["--config", str(path)], [f"--config={path}"], [str(path)]):
        result = runner.invoke(main, ["check-config", *args], env=env)
        assert (result.exit_code, result.stdout) == (
            0,
            "ok: 2 providers (gemini, openai), database: sqlite\n",
        ), args
    both = runner.invoke(main, ["check-config", "--config", str(path), str(tmp_path / "x.yaml")])
    assert both.exit_code == 2
    assert "two config files given" in both.stderr
