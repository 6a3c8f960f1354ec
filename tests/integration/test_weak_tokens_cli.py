"""Weak tokens through the real CLI, as subprocesses: `gateway`, `serve` and `worker` refuse to
start (exit 2, one line per token naming its setting, never its value) when a placeholder or
short token guards a listener off loopback, start with a warning on loopback, and start with one
INFO line under `gateway.allow_weak_tokens`. `check-config` shows them as warnings."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.helpers import run_cli

from llmgateway.testing.configs import write_keys

PLACEHOLDER = "change-me-openai-token"
SHORT_METRICS = "metrics-1234"  # 12 characters
STRONG = "tok-strong-gemini-0123456789"
WAY_OUT = (
    "set a long random token: python -c 'import secrets; print(secrets.token_urlsafe(32))', "
    "or set gateway.allow_weak_tokens: true to accept it on purpose"
)
OPENAI_PATH = "providers.openai.access_control.gateway_access_token"


def write_config(tmp_path: Path, **sections: Any) -> Path:
    """Two providers (openai's token a placeholder), a short metrics token, SQLite in tmp."""
    for name in ("openai", "gemini"):
        write_keys(tmp_path / "keys" / name, [f"sk-{name}-key-000000000000001"])

    def provider(name: str, token: str) -> dict[str, Any]:
        return {
            "provider_type": "openai_like",
            "keys_path": str(tmp_path / "keys" / name),
            "api_base_url": "https://api.example.com/v1",
            "default_model": "m",
            "models": {"m": {"endpoint_suffix": "/chat/completions"}},
            "access_control": {"gateway_access_token": token},
        }

    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "metrics": {"access_token": SHORT_METRICS},
        "worker": {"metrics_port": 0},
        "providers": {
            "openai": provider("openai", PLACEHOLDER),
            "gemini": provider("gemini", STRONG),
        },
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def run_to_end(*args: str, timeout: float = 30) -> tuple[int, str, float]:
    """Run `python -m llmgateway ARGS` to its end: (exit code, stderr, seconds)."""
    started = time.monotonic()
    code, _, stderr = await run_cli(*args, timeout=timeout)
    return code, stderr, time.monotonic() - started


async def run_until_ready(*args: str, timeout: float = 60) -> str:
    """Start `python -m llmgateway ARGS`, read its log until uvicorn says it listens, stop it
    with SIGINT; returns what it logged up to then (fails if it ends or takes too long)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while not any("Uvicorn running on" in line for line in seen):
                line = (await process.stderr.readline()).decode()
                assert line, "it ended before listening:\n" + "".join(seen)
                seen.append(line)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 30)
    return "".join(seen)


def refusal(path: str, why: str, host: str) -> str:
    return f"{path}: {why}; it guards {host}, which is not loopback: refusing to start; {WAY_OUT}"


async def test_gateway_on_a_public_address_refuses_weak_tokens(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, stderr, seconds = await run_to_end(
        "gateway", "--config", str(config), "--host", "0.0.0.0", "--port", "0"
    )
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if "refusing to start" in line]
    assert lines == [
        refusal(OPENAI_PATH, "a placeholder token", "0.0.0.0"),
        refusal("metrics.access_token", "a token of 12 characters, at least 16 needed", "0.0.0.0"),
    ]
    assert PLACEHOLDER not in stderr
    assert SHORT_METRICS not in stderr
    assert "Traceback" not in stderr
    assert seconds < 15
    assert not (tmp_path / "gw.db").exists(), "refused before touching the store"


async def test_gateway_on_loopback_starts_and_warns(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    logged = await run_until_ready(
        "gateway", "--config", str(config), "--host", "127.0.0.1", "--port", "0"
    )
    warnings = [line for line in logged.splitlines() if "accepted on loopback only" in line]
    assert len(warnings) == 2, logged
    assert all("[warning" in line for line in warnings)
    assert f"{OPENAI_PATH}: a placeholder token, accepted on loopback only; {WAY_OUT}" in logged
    assert "metrics.access_token: a token of 12 characters, at least 16 needed" in logged
    assert PLACEHOLDER not in logged
    assert SHORT_METRICS not in logged


async def test_allow_weak_tokens_starts_on_a_public_address_with_one_info_line(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, gateway={"allow_weak_tokens": True})
    logged = await run_until_ready(
        "gateway", "--config", str(config), "--host", "0.0.0.0", "--port", "0"
    )
    accepted = [line for line in logged.splitlines() if "[llmgateway.tokens]" in line]
    assert len(accepted) == 1, logged
    assert "[info" in accepted[0]
    assert f"({OPENAI_PATH}, metrics.access_token)" in accepted[0]
    assert "refusing" not in logged
    assert "accepted on loopback only" not in logged


@pytest.mark.parametrize(
    ("command", "sections", "expected"),
    [
        (
            ["serve", "--host", "0.0.0.0", "--port", "0"],
            {},
            [OPENAI_PATH, "metrics.access_token"],
        ),
        # the worker serves no gateway route, but its config's gateway tokens guard that host
        (["worker"], {"gateway": {"host": "0.0.0.0"}}, [OPENAI_PATH, "metrics.access_token"]),
        # its own metrics listener off loopback: only the metrics token guards that
        (
            ["worker"],
            {"worker": {"metrics_host": "0.0.0.0", "metrics_port": 9}},
            ["metrics.access_token"],
        ),
    ],
)
async def test_serve_and_worker_refuse_too(
    tmp_path: Path, command: list[str], sections: dict[str, Any], expected: list[str]
) -> None:
    config = write_config(tmp_path, **sections)
    code, stderr, _ = await run_to_end(*command, "--config", str(config))
    assert code == 2, stderr
    refused = [line.split(":")[0] for line in stderr.splitlines() if "refusing" in line]
    assert refused == expected
    assert "0.0.0.0, which is not loopback" in stderr
    assert PLACEHOLDER not in stderr
