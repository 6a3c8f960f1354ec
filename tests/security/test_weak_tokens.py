"""The shipped config with the placeholders of examples/.env.example copied as they are (what a
hurried `cp .env.example .env` gives): on a public address the gateway refuses to start, so the
well-known placeholder never opens a port. Checked from outside over a real socket."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from llmgateway.testing.configs import write_keys
from tests.helpers import free_port

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / "examples" / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


async def connects(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_the_env_example_placeholders_never_open_a_public_port(tmp_path: Path) -> None:
    for name in ("openai", "gemini"):
        write_keys(tmp_path / "keys" / name, [f"sk-{name}-0000000000000001"])
    port = free_port()
    env = {
        **os.environ,
        **env_example(),
        "LLMGATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "gateway",
        "--config", str(ROOT / "config" / "providers.yaml"),
        "--host", "0.0.0.0", "--port", str(port),
        cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        waiting = asyncio.create_task(process.communicate())
        while not waiting.done():
            assert not await connects(port), "a port opened behind a placeholder token"
            await asyncio.sleep(0.05)  # paces the look-outs while the process runs
        _, stderr = await asyncio.wait_for(waiting, 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2
    refused = [line for line in stderr.decode().splitlines() if "refusing to start" in line]
    assert [line.split(":")[0] for line in refused] == [
        "providers.openai.access_control.gateway_access_token",
        "providers.gemini.access_control.gateway_access_token",
    ]
    assert all("a placeholder token" in line for line in refused)
    assert "change-me" not in stderr.decode()
