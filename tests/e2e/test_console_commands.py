"""The commands that run the Keeper serve the console, as real processes: `worker` at /admin on
its metrics listener, `serve` on the console's own port; the admin token is in no log line."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from llmgateway.config.settings import AdminSettings, Settings, WorkerSettings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import eventually, free_port, gateway_settings

ADMIN_TOKEN = "e2e-console-admin-token-93d0c7a51f"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def config_with_console(tmp_path: Path, fake: FakeUpstream, **admin: Any) -> tuple[Path, Settings]:
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake).model_copy(
        update={
            "admin": AdminSettings(token=ADMIN_TOKEN, **admin),
            "worker": WorkerSettings(metrics_port=free_port()),
        }
    )
    data = settings.model_dump(mode="json", exclude_defaults=True)
    data["database"] = {"url": f"sqlite:///{tmp_path / 'console.db'}"}
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(data))
    return config, settings


async def console_answers(console: str, process: asyncio.subprocess.Process) -> None:
    """Wait until the console shows its breakers page to the admin token."""
    async with aiohttp.ClientSession() as http:

        async def up() -> bool:
            assert process.returncode is None, "the command exited"
            try:
                async with http.get(console + "breakers", headers=BEARER) as answer:
                    return answer.status == 200 and "openai" in await answer.text()
            except aiohttp.ClientConnectionError:
                return False

        await eventually(up, within=60, step=0.1, what=f"{console} answering")
        async with http.get(console, allow_redirects=False) as answer:
            assert answer.status == 303  # a browser without a session: to the login form


async def run(args: list[str], log: Path, console: str) -> str:
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", *args, stdout=output, stderr=output
        )
    try:
        await console_answers(console, process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
    return log.read_text()


@pytest.mark.parametrize("own_port", [False, True])
async def test_worker_serves_the_console(
    tmp_path: Path, fake: FakeUpstream, own_port: bool
) -> None:
    port = free_port()
    config, settings = config_with_console(tmp_path, fake, **({"port": port} if own_port else {}))
    where = port if own_port else settings.worker.metrics_port
    console = f"http://127.0.0.1:{where}/admin/"
    text = await run(["worker", "--config", str(config)], tmp_path / "worker.log", console)
    assert f"the console is at {console}" in text
    assert ADMIN_TOKEN not in text


async def test_serve_serves_the_console(tmp_path: Path, fake: FakeUpstream) -> None:
    port = free_port()
    config, _ = config_with_console(tmp_path, fake, port=port)
    console = f"http://127.0.0.1:{port}/admin/"
    args = ["serve", "--config", str(config), "--port", str(free_port())]
    text = await run(args, tmp_path / "serve.log", console)
    assert ADMIN_TOKEN not in text
