"""A real Prometheus (Debian's `prometheus` package) on a loopback port for a test: it scrapes
the given targets every second with the metrics token and answers PromQL over its HTTP API.
Without the binary the test is skipped, or failed under LLMGATEWAY_REQUIRE_PROMETHEUS=1."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from tests.helpers import eventually, free_port

REQUIRE_VARIABLE = "LLMGATEWAY_REQUIRE_PROMETHEUS"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def require_prometheus() -> str:
    """The binary's path; skips the test without it (fails it when it is required)."""
    found = prometheus_binary()
    if found is not None:
        return found
    problem = "no prometheus binary (Debian: apt-get install prometheus)"
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{problem}; {REQUIRE_VARIABLE}=1 requires it", pytrace=False)
    pytest.skip(problem)


@dataclass(frozen=True, slots=True)
class Prometheus:
    """A running Prometheus: its URL and an HTTP client for queries."""

    url: str
    http: httpx.AsyncClient

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (vector samples); fails on a PromQL error."""
        answer = await self.http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = answer.json()
        assert answer.status_code == 200, f"{expr}: {body.get('error')}"
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextlib.asynccontextmanager
async def running_prometheus(
    folder: Path, targets: Sequence[str], token: str, job: str = "llmgateway"
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping `targets` (host:port, all in one job) every second with `token`."""
    binary = require_prometheus()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "authorization": {"credentials": token},
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> bool:
                assert process.poll() is None, (folder / "prometheus.log").read_text()
                try:
                    return (await http.get(f"{url}/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, 30, step=0.1, what="prometheus ready")
            yield Prometheus(url, http)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
