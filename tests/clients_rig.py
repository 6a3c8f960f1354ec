"""What the client tests share: a config file with one OpenAI-like provider on a fake upstream,
route `fast` and optional `gateway.tokens` entries, and the `llmgateway clients` command run
in-process."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from llmgateway.cli.main import main
from llmgateway.testing.configs import write_keys

CONFIG_TOKEN = "gw-config-declared-token-7d3f9a2c51e8"
"""The token of the config-declared client `ci-bot` (the config holds only its SHA-256)."""


def write_config(
    folder: Path,
    url: str,
    base: str = "http://127.0.0.1:9/v1",
    *,
    refresh_sec: float = 0.2,
    tokens: list[dict[str, Any]] | None = None,
    gateway: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The config file: provider `alpha` (model gpt-a, one good key) at `base`, route `fast`
    to it, and `ci-bot` declared by SHA-256 plus `tokens`."""
    keys = write_keys(folder / "keys" / "alpha", ["sk-good-alpha-clients-0001"]).parent
    declared = {
        "name": "ci-bot",
        "token_sha256": hashlib.sha256(CONFIG_TOKEN.encode()).hexdigest(),
        "routes": ["fast"],
        "rpm": 100,
    }
    data = {
        "database": {"url": url},
        "gateway": {
            "refresh_interval_sec": refresh_sec,
            "tokens": [declared, *(tokens or [])],
            **(gateway or {}),
        },
        "providers": {
            "alpha": {
                "provider_type": "openai_like",
                "keys_path": str(keys),
                "api_base_url": base,
                "default_model": "gpt-a",
                "models": {"gpt-a": {"endpoint_suffix": "/chat/completions"}},
                "worker_health_policy": {"batch_delay_sec": 0, "verification_attempts": 0},
            }
        },
        "routes": {"fast": {"targets": [{"provider": "alpha", "model": "gpt-a"}]}},
        **(extra or {}),
    }
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args: str) -> Result:
    """`llmgateway ARGS` in this process."""
    return CliRunner().invoke(main, list(args))


def invoke(*args: str) -> str:
    """`run`, which must exit 0; its output."""
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


async def ainvoke(*args: str) -> str:
    """`invoke` from a test running an event loop (the command runs its own, in a thread)."""
    return await asyncio.to_thread(invoke, *args)


def secret_in(output: str) -> str:
    """The token `clients create`/`rotate` printed (its last line)."""
    return output.strip().splitlines()[-1]


async def arun(*args: str) -> Result:
    """`run` from a test running an event loop."""
    return await asyncio.to_thread(run, *args)
