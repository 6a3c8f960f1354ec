"""Memory and leaks: a real gateway process with 100,000 keys under a scaled-down soak.

The full-length run (30 minutes) is `bench/soak.py`; this one lasts ~40 s. The gateway is a
real `llmgateway gateway` process, so its RSS and open descriptors are its own.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import yaml

from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.soak import rss_mib, soak
from tests.helpers import free_port, wait_ready

TOKEN = "gw-soak-token-0001"
METRICS_TOKEN = "metrics-soak-token-0001"
OPENAI_KEYS = 60_000
GEMINI_KEYS = 40_000
RSS_LIMIT_MIB = 150e6 / 2**20
"""The target, 150 MB, in the MiB that /proc reports (143.05)."""
SOAK_SEC = 40.0
WARMUP_SEC = 10.0


def write_config(folder: Path, fake: FakeUpstream) -> Path:
    for name, count in (("openai", OPENAI_KEYS), ("gemini", GEMINI_KEYS)):
        lines = (f"sk-soak-{name}-{i:08d}-abcdefghijklmnopqrstuv" for i in range(count))
        write_keys(folder / "keys" / name, lines)
    config = two_providers(
        folder,
        fake,
        openai_token=TOKEN,
        gemini_token="gw-soak-gemini-0002",
        openai_models=("gpt-4o-mini", "gpt-4o"),
        both={"shared_key_status": True},
        logging={"level": "WARNING"},
        metrics={"access_token": METRICS_TOKEN},
        gateway={"refresh_interval_sec": 1},
    )
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def start_gateway(config: Path) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "gateway", "--config", str(config),
        "--port", str(port),
    )  # fmt: skip
    await wait_ready(f"http://127.0.0.1:{port}", process)
    return process, port


async def test_100k_keys_fit_in_150_mb(tmp_path: Path) -> None:
    async with FakeUpstream() as fake:
        process, _ = await start_gateway(write_config(tmp_path, fake))
        try:
            ready = rss_mib(process.pid)
        finally:
            process.terminate()
            await process.wait()
    assert ready <= RSS_LIMIT_MIB, f"RSS {ready:.0f} MiB with 100k keys"


async def test_a_soak_with_100k_keys_leaks_nothing(tmp_path: Path) -> None:
    async with FakeUpstream(chunks=5) as fake:
        process, port = await start_gateway(write_config(tmp_path, fake))
        try:
            url = f"http://127.0.0.1:{port}"
            report = await soak(url, TOKEN, process.pid, SOAK_SEC, metrics_token=METRICS_TOKEN)
            async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as ready:
                assert ready.status == 200
        finally:
            process.terminate()
            await process.wait()
        assert fake.open_requests == 0  # every upstream call ended
    assert report.errors == 0
    assert report.requests > 1000
    peak = max(sample.rss_mib for sample in report.samples)
    tasks = [s.tasks for s in report.samples]
    print(f"soak: {report.requests} requests, peak RSS {peak:.1f} MiB", end=", ")
    print(
        f"event-loop tasks {min(tasks)} to {max(tasks)} growth {report.growth_mib(WARMUP_SEC):.1f}"
    )
    assert peak <= RSS_LIMIT_MIB, f"RSS {peak:.0f} MiB with 100k keys under load"
    growth = report.growth_mib(WARMUP_SEC)
    assert growth <= 5.0, f"RSS grew {growth:.1f} MiB during the soak"
    assert report.file_growth(WARMUP_SEC) <= 4, "open descriptors grew: leaked connections"
    assert min(s.tasks for s in report.samples) > 0  # the gauge is there and counts
    # requests in flight (up to 16, a task or two each) come and go between samples; a task
    # leaked per request would add one per request: ~5,000 a second here
    assert report.task_growth(WARMUP_SEC) <= 48, "event-loop tasks grew: leaked tasks"
