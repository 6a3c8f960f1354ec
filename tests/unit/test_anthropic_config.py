"""`check-config` on Anthropic providers: a config with one validates, a misnamed type is
hinted, and a route mixing Anthropic targets with others is warned about for the Anthropic
surface (which serves only its Anthropic targets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llmgateway.cli.main import main

CONFIG = """
providers:
  claude:
    provider_type: {kind}
    keys_path: keys/anthropic
    api_base_url: https://api.anthropic.com/v1
    default_model: claude-sonnet-4-5
    models:
      claude-sonnet-4-5: {{endpoint_suffix: /messages}}
    access_control: {{gateway_access_token: tok-claude-0123456789abc}}
  openai:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    access_control: {{gateway_access_token: tok-openai-0123456789abc}}
gateway:
  tokens: [{{name: app, token: tok-app-0123456789abcdef}}]
routes:
  mixed:
    targets:
      - {{provider: claude, model: claude-sonnet-4-5}}
      - {{provider: openai, model: gpt-4o-mini}}
  claude-only:
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def check(runner: CliRunner, tmp_path: Path, kind: str) -> tuple[int, str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(kind=kind), encoding="utf-8")
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    return result.exit_code, result.stdout, result.stderr


def test_an_anthropic_provider_validates_and_a_mixed_route_is_warned_about(
    runner: CliRunner, tmp_path: Path
) -> None:
    code, out, err = check(runner, tmp_path, "anthropic")
    assert code == 0, err
    assert out.startswith("ok: 2 providers (claude, openai), 2 routes (mixed, claude-only)")
    assert err.splitlines() == [
        "warning: routes.mixed: on the Anthropic surface (/v1/messages) only "
        "claude/claude-sonnet-4-5 serve (no translation)"
    ]


def test_claude_as_a_type_is_hinted_as_anthropic(runner: CliRunner, tmp_path: Path) -> None:
    code, _, err = check(runner, tmp_path, "claude")
    assert code == 2
    assert "providers.claude.provider_type: unknown provider_type 'claude' (did you mean " in err
    assert "'anthropic'?)" in err
