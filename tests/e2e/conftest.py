"""End-to-end fixtures: the fake upstream and the real gateway, both on loopback HTTP."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.testing.fake_upstream import FakeUpstream

OPENAI_TOKEN = "gw-openai-token-0001"
GEMINI_TOKEN = "gw-gemini-token-0002"
METRICS_TOKEN = "gw-metrics-token-0003"
METRICS_AUTH = {"authorization": f"Bearer {METRICS_TOKEN}"}
"""What `/metrics` and the details of `/readyz` need (`metrics.access_token` of the fixtures)."""


def write_keys(folder: Path, keys: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keys.txt").write_text("\n".join(keys) + "\n")


def gateway_settings(
    tmp_path: Path,
    fake: FakeUpstream,
    gateway_section: dict[str, Any] | None = None,
    **provider_extra: Any,
) -> Settings:
    """Two providers on the fake upstream: `openai` (openai_like) and `gemini`."""
    retry = {
        "enabled": True,
        "on_key_error": {"attempts": 5, "backoff_sec": 0.0},
        "on_server_error": {"attempts": 3, "backoff_sec": 0.0},
    }
    common: dict[str, Any] = {"gateway_policy": {"retry": retry}, **provider_extra}
    data = {
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "gateway": {"refresh_interval_sec": 0.2, **(gateway_section or {})},
        "metrics": {"access_token": METRICS_TOKEN},
        "providers": {
            "openai": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys" / "openai"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "models": {
                    "gpt-4o-mini": {"endpoint_suffix": "/chat/completions"},
                    "gpt-4o": {"endpoint_suffix": "/chat/completions"},
                },
                "access_control": {"gateway_access_token": OPENAI_TOKEN},
                **common,
            },
            "gemini": {
                "provider_type": "gemini",
                "keys_path": str(tmp_path / "keys" / "gemini"),
                "api_base_url": fake.gemini_base,
                "default_model": "gemini-2.5-flash",
                "shared_key_status": True,
                "models": {"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
                "access_control": {"gateway_access_token": GEMINI_TOKEN},
                **common,
            },
        },
    }
    return Settings.model_validate(data)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def started() -> list[Any]:
    """The apps the `gateway` fixture started, newest last (for looking inside them)."""
    return []


@pytest.fixture
def gateway(tmp_path: Path, fake: FakeUpstream, started: list[Any]) -> GatewayFactory:
    """`async with gateway(openai=[keys], gemini=[keys]) as url:` runs the real gateway."""

    @contextlib.asynccontextmanager
    async def start(
        openai: list[str] | None = None,
        gemini: list[str] | None = None,
        gateway_section: dict[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncIterator[str]:
        write_keys(tmp_path / "keys" / "openai", openai or ["sk-good-openai-000000000001"])
        write_keys(tmp_path / "keys" / "gemini", gemini or ["AIza-good-gemini-00000000001"])
        settings = gateway_settings(tmp_path, fake, gateway_section, **extra)
        app = create_app(settings, rng=random.Random(7))
        started.append(app)
        async with running(app) as url:
            yield url

    return start
