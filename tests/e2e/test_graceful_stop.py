"""A graceful stop writes every key-status finding still waiting in the write-behind queue:
5,000 of them, pending when the gateway is told to stop while the store is briefly
unreachable, are all in the store afterwards (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from llmgateway.core.outcomes import ErrorReason, KeyStatus
from llmgateway.core.pool_keys import StatusChange
from llmgateway.store import StatusEvent, Store
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import chaos_settings, free_port, start_gateway, wait_ready

PENDING = 5_000
OUTAGE_SEC = 0.5


async def test_a_graceful_stop_writes_every_pending_status_change(
    tmp_path: Path, db_url: str
) -> None:
    write_keys(
        tmp_path / "keys" / "openai", [f"sk-drain-{i:08d}-abcdefghijkl" for i in range(PENDING)]
    )
    write_keys(tmp_path / "keys" / "gemini", ["AIza-drain-00000000-abcdefghijkl"])
    async with FakeUpstream() as fake:
        settings = chaos_settings(tmp_path, fake, database_url=db_url)
        async with start_gateway(settings) as running:
            gateway = running.gateway
            assert gateway.store is not None
            assert gateway.writer is not None
            rows = [r for r in (await gateway.store.snapshot()).keys if r.provider == "openai"]
            assert len(rows) == PENDING
            writes = gateway.writer.write
            back_at = time.monotonic() + OUTAGE_SEC

            async def unreachable_for_a_while(events: Sequence[StatusEvent]) -> object:
                if time.monotonic() < back_at:
                    raise ConnectionError("store unreachable")
                return await writes(events)

            # the background writer fails and backs off; the stop begins during the outage
            gateway.writer.write = unreachable_for_a_while
            now = gateway.clock()
            for row in rows:  # no await in between: all of them wait when the stop begins
                found = StatusChange(
                    row.key_id, row.model, KeyStatus.INVALID_KEY, ErrorReason.INVALID_KEY, None, 401
                )
                gateway.writer.offer("openai", found, now)
            assert gateway.writer.pending == PENDING
    store = await Store.open(settings.database.async_url)
    try:
        rows = [r for r in (await store.snapshot()).keys if r.provider == "openai"]
    finally:
        await store.close()
    assert len(rows) == PENDING
    assert {r.status for r in rows} == {KeyStatus.INVALID_KEY}


@pytest.mark.parametrize("command", ["gateway", "serve"])
async def test_ctrl_c_stops_the_server_with_exit_0_and_no_abort_message(
    tmp_path: Path, command: str
) -> None:
    document = two_providers(
        tmp_path,
        "http://127.0.0.1:9",
        openai_token="gw-openai-token-0001-abcdef",
        gemini_token="gw-gemini-token-0001-abcdef",
    )
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(document))
    write_keys(tmp_path / "keys" / "openai", ["sk-graceful-stop-0001-abcdef"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-graceful-stop-0001-abcdef"])
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", command, "--config", str(config), "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process)
        process.send_signal(signal.SIGINT)
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Aborted" not in output
    assert "Traceback" not in output
    assert output.rstrip().endswith("stopped"), output


def _interruptible() -> None:
    # Ctrl-C's default, whatever this process inherited (`pytest &` ignores SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
