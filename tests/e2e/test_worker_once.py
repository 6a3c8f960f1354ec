"""`llmgateway worker --once` as a real process against the fake upstream, on SQLite and
PostgreSQL: the sync's report as soon as the sync ends, progress lines while a round runs,
`task_timeout_sec` ending the round cleanly, and Ctrl-C printing the summary so far, exit 130."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from llmgateway.store import Store
from llmgateway.store.tables import key_status
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.configs import write_keys
from tests.helpers import run_cli


def write_config(
    tmp_path: Path, fake: FakeUpstream, db_url: str, policy: dict[str, Any], worker: dict[str, Any]
) -> Path:
    document = {
        "database": {"url": db_url},
        "worker": worker,
        "providers": {
            "p1": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "timeouts": {"connect": 2, "read": 30, "pool": 2},
                "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
                "worker_health_policy": policy,
            }
        },
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def slow_keys(fake: FakeUpstream, count: int, delay: float) -> list[str]:
    secrets = [f"sk-slow-first-{i:03d}-abcdefghijkl" for i in range(count)]
    for secret in secrets:
        fake.set_behavior(secret, Behavior(delay=delay))
    return secrets


async def leased_rows(db_url: str) -> int:
    async with await Store.open(db_url) as store, store.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(key_status.c.lease_owner.is_not(None))
        return int(await conn.scalar(query) or 0)


async def start_worker(config: Path) -> asyncio.subprocess.Process:
    """`worker --once` with stderr merged into stdout, so the order of lines is kept."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "worker", "--once", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def test_a_round_prints_the_sync_at_once_then_progress_with_rate_eta_and_outcomes(
    tmp_path: Path, fake: FakeUpstream, db_url: str
) -> None:
    secrets = slow_keys(fake, 6, 0.25)  # 12 calls one at a time: about 3 s
    write_keys(tmp_path / "keys", secrets)
    first_check = {"concurrency": 1}
    config = write_config(
        tmp_path, fake, db_url, {"first_check": first_check}, {"progress_interval_sec": 0.4}
    )
    process = await start_worker(config)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    lines = out.decode().splitlines()
    assert process.returncode == 0, lines
    sync = lines.index("p1: keys +6 added, -0 removed, 0 restored, 6 active")
    progress = [i for i, line in enumerate(lines) if line.startswith("  probed ")]
    assert len(progress) >= 2, lines
    assert sync < progress[0]  # the sync's report comes when the sync ends, not with the round
    first = lines[progress[0]]
    assert "/6 (" in first
    assert " rows/s, ETA " in first
    assert "healthy" in first
    assert "failed" in first
    assert "verifying" in first
    assert progress[-1] < lines.index(
        next(line for line in lines if line.startswith("probe round: 6 due, 6 healthy"))
    )


async def test_task_timeout_ends_the_round_cleanly(
    tmp_path: Path, fake: FakeUpstream, db_url: str
) -> None:
    hanging = [f"sk-hang-first-{i:03d}-abcdefghijkl" for i in range(4)]
    write_keys(tmp_path / "keys", hanging)
    config = write_config(tmp_path, fake, db_url, {"task_timeout_sec": 1}, {})
    code, out, err = await run_cli("worker", "--once", "--config", str(config), timeout=30)
    assert code == 0, err
    assert "probe round: 4 due, 0 healthy, 0 failed, 0 verifying, 0 egress faults" in out, out
    assert "cut by task_timeout_sec for 1 provider(s), 4 rows not probed stay due" in out
    assert "maintenance:" in out  # the command went on and ended normally
    assert await leased_rows(db_url) == 0


async def test_ctrl_c_prints_the_summary_so_far_and_exits_130(
    tmp_path: Path, fake: FakeUpstream, db_url: str
) -> None:
    secrets = slow_keys(fake, 40, 0.25)  # 80 calls one at a time: 20 s unless stopped
    write_keys(tmp_path / "keys", secrets)
    config = write_config(
        tmp_path,
        fake,
        db_url,
        {"first_check": {"concurrency": 1}},
        {"progress_interval_sec": 0.3},
    )
    process = await start_worker(config)
    assert process.stdout is not None
    seen: list[str] = []
    while not any(line.startswith("  probed ") for line in seen):
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, seen
        seen.append(line.decode().rstrip("\n"))
    process.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(process.communicate(), 30)
    output = "\n".join(seen) + "\n" + rest.decode()
    assert process.returncode == 130, output
    assert "Aborted" not in output
    assert "Traceback" not in output
    summary = next(line for line in output.splitlines() if line.startswith("probe round: 40 due"))
    assert "stopped early" in summary
    assert "rows not probed stay due" in summary
    assert await leased_rows(db_url) == 0
