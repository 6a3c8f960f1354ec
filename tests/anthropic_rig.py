"""An Anthropic provider beside the suite's two (`claude`, on the fake upstream's Messages API),
for the tests that drive it: its config, its token, and the official SDK's clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic

from llmgateway.config.settings import Settings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import chaos_settings, gateway_settings

CLAUDE_TOKEN = "gw-claude-token-0004"
GOOD_CLAUDE = "sk-ant-good-claude-0000000001"
MODEL = "claude-sonnet-4-5"


def claude_provider(folder: Path, fake: FakeUpstream | str, **extra: Any) -> dict[str, Any]:
    """The `claude` provider's settings (anthropic, one model on `/messages`) on the fake, or
    on another upstream's URL (`http://127.0.0.1:PORT`)."""
    return {
        "provider_type": "anthropic",
        "keys_path": str(folder / "keys" / "claude"),
        "api_base_url": f"{fake}/v1" if isinstance(fake, str) else fake.anthropic_base,
        "default_model": MODEL,
        "models": {MODEL: {"endpoint_suffix": "/messages"}},
        "access_control": {"gateway_access_token": CLAUDE_TOKEN},
        **extra,
    }


def claude_settings(
    tmp_path: Path,
    fake: FakeUpstream | str,
    keys: list[str] | None = None,
    *,
    chaos: bool = False,
    top: dict[str, Any] | None = None,
    **extra: Any,
) -> Settings:
    """The suite's settings (`gateway_settings`, or `chaos_settings` when `chaos`) with the
    `claude` provider added, its keys `keys` (one good one by default) written; `extra` goes to
    the `claude` provider, `top` replaces whole top-level sections (`routes`, `gateway`)."""
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    write_keys(tmp_path / "keys" / "claude", keys or [GOOD_CLAUDE])
    base = chaos_settings(tmp_path, fake) if chaos else gateway_settings(tmp_path, fake)
    document = base.model_dump(mode="json", exclude_unset=True)
    if chaos:  # the chaos policy and timeouts, unless the test names its own
        gemini = document["providers"]["gemini"]
        extra = {"gateway_policy": gemini["gateway_policy"], "timeouts": gemini["timeouts"]} | extra
    document["providers"]["claude"] = claude_provider(tmp_path, fake, **extra)
    document.update(top or {})
    return Settings.model_validate(document)


def sync_client(url: str, token: str = CLAUDE_TOKEN) -> anthropic.Anthropic:
    """The official SDK on the gateway: the gateway token as the API key (this SDK sends it as
    a Bearer token beside `anthropic-version`; `x-api-key` is the raw API's way)."""
    return anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)


def async_client(url: str, token: str = CLAUDE_TOKEN) -> anthropic.AsyncAnthropic:
    """The official async SDK on the gateway."""
    return anthropic.AsyncAnthropic(base_url=url, api_key=token, max_retries=0)
