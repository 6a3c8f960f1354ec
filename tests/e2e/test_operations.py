"""Operations end to end: /metrics after real traffic, its Bearer protection, /readyz, the
request context on every log line, debug modes, and metrics across two worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import structlog
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import LoggingSettings, MetricsSettings, WorkerSettings
from llmgateway.keeper.run import Keeper
from llmgateway.keyfiles import run_sync
from llmgateway.observe import logs
from llmgateway.observe.metrics import FLUSH_SEC, Metrics
from llmgateway.observe.metrics_http import keeper_metrics
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    GatewayFactory,
    eventually,
    free_port,
    gateway_settings,
    wait_ready,
)

GOOD = "sk-good-openai-000000000001"
INVALID = "sk-ops-invalid-000000000001"
METRICS_TOKEN = "metrics-token-secret-0001"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def chat(url: str) -> Any:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Every log line of the process as JSON in a file, at DEBUG; logging restored after."""
    folder = tmp_path / "logs"
    logs.configure(LoggingSettings(level="DEBUG", format="json", dir=folder), name="test")
    yield folder / "test.log"
    structlog.reset_defaults()
    root = __import__("logging").getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_metrics_after_real_traffic(gateway: GatewayFactory, fake: FakeUpstream) -> None:
    fake.set_behavior(INVALID, Behavior(invalid=True))
    async with gateway(openai=[GOOD, INVALID]) as url:
        for _ in range(6):
            reply = await chat(url)
            assert reply.choices[0].message.content
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c async for c in stream]
        with pytest.raises(openai.NotFoundError):  # refused before a key is taken
            await client.chat.completions.create(
                model="not-configured", messages=[{"role": "user", "content": "hi"}]
            )
        async with httpx.AsyncClient() as http:
            assert (
                await http.get(f"{url}/v1/models", headers={"authorization": "Bearer no"})
            ).status_code == 401
            text = (await http.get(f"{url}/metrics", headers=METRICS_AUTH)).text
    found = samples(text)
    assert (
        value(
            found, "llmgateway_requests_total", provider="openai", model="gpt-4o-mini", code="200"
        )
        == 6
    )
    assert (
        value(found, "llmgateway_requests_total", provider="openai", model="gpt-4o", code="200")
        == 1
    )
    assert (
        value(found, "llmgateway_requests_total", provider="openai", model="other", code="404") == 1
    )
    assert (
        value(found, "llmgateway_requests_total", provider="none", model="other", code="401") == 1
    )
    duration = value(
        found, "llmgateway_request_duration_seconds_count", provider="openai", model="gpt-4o-mini"
    )
    assert duration == 6
    assert (
        value(
            found, "llmgateway_time_to_first_byte_seconds_count", provider="openai", model="gpt-4o"
        )
        == 1
    )
    assert value(found, "llmgateway_overhead_seconds_count", provider="openai") == 7
    assert value(found, "llmgateway_upstream_attempts_total", provider="openai", reason="ok") == 7
    assert (
        value(found, "llmgateway_upstream_attempts_total", provider="openai", reason="invalid_key")
        == 1
    )
    assert value(found, "llmgateway_retries_total", provider="openai", reason="invalid_key") == 1
    assert (
        value(found, "llmgateway_key_cooldowns_total", provider="openai", reason="invalid_key") == 1
    )
    assert value(found, "llmgateway_inflight_requests", provider="openai") == 0
    assert (
        value(found, "llmgateway_keys", provider="openai", model="gpt-4o-mini", status="invalid")
        == 1
    )
    assert (
        value(found, "llmgateway_keys", provider="gemini", model="shared", status="untested") == 1
    )
    openai_states = {"provider": "openai", "model": "gpt-4o-mini"}
    assert value(found, "llmgateway_key_states", **openai_states, state="invalid") == 1
    assert (
        value(found, "llmgateway_key_states", provider="gemini", model="shared", state="untested")
        == 1
    )
    assert value(found, "llmgateway_circuit_breaker_state", provider="openai") == 0
    buckets = {
        dict(labels).get("le") for name, labels in found if name.endswith("duration_seconds_bucket")
    }
    assert "600.0" in buckets
    labels = {key for _, pairs in found for key, _ in pairs}
    assert not labels & {"key", "key_id", "token", "secret"}
    for secret in (GOOD, INVALID, OPENAI_TOKEN):
        assert secret not in text


async def test_metrics_need_the_bearer_token_when_one_is_set(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake).model_copy(
        update={"metrics": MetricsSettings(access_token=METRICS_TOKEN)}
    )
    async with (
        running(create_app(settings, rng=random.Random(1))) as url,
        httpx.AsyncClient() as http,
    ):
        missing = await http.get(f"{url}/metrics")
        wrong = await http.get(f"{url}/metrics", headers={"authorization": "Bearer nope"})
        right = await http.get(
            f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
        )
    assert missing.status_code == wrong.status_code == 401
    assert "metrics.access_token" in missing.json()["error"]
    assert METRICS_TOKEN not in missing.text
    assert right.status_code == 200
    assert "llmgateway_requests_total" in right.text or "llmgateway_requests" in right.text


async def test_readyz_says_what_is_wrong(gateway: GatewayFactory, fake: FakeUpstream) -> None:
    fake.set_behavior(INVALID, Behavior(invalid=True))
    async with gateway(openai=[INVALID]) as url, httpx.AsyncClient() as http:
        with pytest.raises(openai.APIStatusError):
            await chat(url)
        ready = await http.get(f"{url}/readyz", headers=METRICS_AUTH)
        alive = await http.get(f"{url}/healthz")
    assert alive.json() == {"status": "ok"}
    body = ready.json()
    assert ready.status_code == 200
    assert body["ready"] is True
    assert "provider openai model gpt-4o-mini: no usable key (1 invalid)" in body["warnings"]
    assert body["providers"]["openai"]["keys"] == 1
    assert body["providers"]["openai"]["breaker"] == "closed"
    assert body["providers"]["gemini"]["models"] == {"shared": {"untested": 1}}


async def test_every_line_of_a_request_carries_its_context(
    gateway: GatewayFactory, fake: FakeUpstream, log_file: Path
) -> None:
    fake.set_behavior(INVALID, Behavior(invalid=True))
    async with (
        gateway(openai=[INVALID, GOOD], gateway_policy={"debug_mode": "headers_only"}) as url,
        httpx.AsyncClient() as http,
    ):
        for n in range(3):
            answer = await http.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_TOKEN}", "x-request-id": f"req-{n}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.headers["x-request-id"] == f"req-{n}"
    lines = read_lines(log_file)
    of_requests = [
        line for line in lines if line["logger"] in ("llmgateway.request", "llmgateway.debug")
    ]
    assert (
        len(of_requests) >= 3 * 3
    )  # a request line, and at least a request and response per attempt
    for line in of_requests:
        assert line["request_id"].startswith("req-")
        assert line["provider"] == "openai"
        assert line["model"] == "gpt-4o-mini"
        assert re.fullmatch(r"[0-9a-f]{12}", line["key"])
        assert line["attempt"] >= 1
    done = [line for line in of_requests if line["event"] == "request done"]
    assert [line["request_id"] for line in done] == ["req-0", "req-1", "req-2"]
    assert all(line["outcome"] == "ok" and line["status"] == 200 for line in done)
    assert done[0]["attempts"] in (1, 2)
    text = log_file.read_text()
    for secret in (GOOD, INVALID, OPENAI_TOKEN):
        assert secret not in text


@pytest.mark.parametrize("mode", ["disabled", "headers_only", "full_body"])
async def test_debug_modes_log_exchanges_with_secrets_scrubbed(
    mode: str, gateway: GatewayFactory, fake: FakeUpstream, log_file: Path
) -> None:
    fake.set_behavior(INVALID, Behavior(invalid=True))
    async with gateway(openai=[INVALID, GOOD], gateway_policy={"debug_mode": mode}) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
        await chat(url)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "secret-prompt"}],
            stream=True,
        )
        assert [c async for c in stream]
    debug = [line for line in read_lines(log_file) if line["logger"] == "llmgateway.debug"]
    text = log_file.read_text()
    for secret in (GOOD, INVALID, OPENAI_TOKEN):
        assert secret not in text
    if mode == "disabled":
        assert debug == []
        return
    sent = [line["debug"] for line in debug if line["event"] == "upstream request"]
    assert sent
    assert all(d["headers"]["authorization"].startswith("Bearer sk-…") for d in sent)
    answers = [line["debug"] for line in debug if line["event"] == "upstream response"]
    assert {a["status"] for a in answers} >= {200}
    bodies = [line["debug"] for line in debug if line["event"] == "upstream response body"]
    if mode == "headers_only":
        assert all("body" not in d for d in sent + answers)
        assert bodies == []
    else:
        assert any("secret-prompt" in d["body"] for d in sent)
        assert any("data:" in d["body"] for d in bodies)  # the streamed answer, once it ended
        assert any("…" in a.get("body", "") or a["status"] == 200 for a in answers)


def counters(folder: Path) -> list[Path]:
    """The counter files of the gateway's processes that have counted something."""
    return list(folder.glob("llmgateway-metrics-*/counter_*.db"))


async def test_two_worker_processes_report_the_sum(tmp_path: Path, fake: FakeUpstream) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    data = gateway_settings(tmp_path, fake).model_dump(mode="json", exclude_defaults=True)
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "gateway", "--config", str(config),
        "--port", str(port), "--workers", "2",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process)
        # new connections, so that both processes serve some of the requests and scrapes: at
        # least 20, and more until both have (the kernel hands a shared socket's connections
        # to whichever process accepts first, which on a busy machine can be one for a while)
        total = 0
        while total < 20 or (len(counters(tmp_path)) < 2 and total < 400):
            async with httpx.AsyncClient() as fresh:
                answer = await fresh.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                assert answer.status_code == 200
            total += 1
        key = (
            "llmgateway_requests_total",
            frozenset({"provider": "openai", "model": "gpt-4o-mini", "code": "200"}.items()),
        )

        async def summed() -> bool:
            async with httpx.AsyncClient() as fresh:
                found = samples((await fresh.get(f"{url}/metrics", headers=METRICS_AUTH)).text)
            return found.get(key) == total

        # each process hands its tallies on every FLUSH_SEC
        await eventually(summed, within=FLUSH_SEC + 10, step=0.1)
        seen = set()
        for _ in range(8):
            async with httpx.AsyncClient() as fresh:
                found = samples((await fresh.get(f"{url}/metrics", headers=METRICS_AUTH)).text)
            seen.add(found.get(key))
            assert (
                value(found, "llmgateway_upstream_attempts_total", provider="openai", reason="ok")
                == total
            )
        assert seen == {float(total)}
        assert fake.calls(GOOD) == total
        assert len(counters(tmp_path)) == 2, "both processes served, and the scrapes add up"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert not list(tmp_path.glob("llmgateway-metrics-*")), stderr.decode()[-2000:]


async def test_keeper_serves_its_own_metrics_behind_the_token(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD, INVALID])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    fake.set_behavior(INVALID, Behavior(invalid=True))
    port = free_port()
    settings = gateway_settings(tmp_path, fake).model_copy(
        update={
            "metrics": MetricsSettings(access_token=METRICS_TOKEN),
            "worker": WorkerSettings(metrics_port=port),
        }
    )
    metrics = Metrics.create()
    async with await Store.open(settings.database.async_url) as store:
        await store.upgrade()
        keeper = Keeper(settings, store, metrics=metrics)
        metrics.synced(await run_sync(settings, store))
        await keeper.probe_round()
        async with keeper_metrics(settings, metrics, store), httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}"
            refused = await http.get(f"{url}/metrics")
            answer = await http.get(
                f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
            )
            alive = await http.get(f"{url}/healthz")
        await keeper.upstream.close()
    assert refused.status_code == 401
    assert alive.status_code == 200
    found = samples(answer.text)
    # two keys × two models: the good key's rows pass, the invalid key's fail
    assert value(found, "llmgateway_probes_total", provider="openai", result="healthy") == 2
    assert value(found, "llmgateway_probes_total", provider="openai", result="failed") == 2
    assert value(found, "llmgateway_probe_duration_seconds_count", provider="openai") == 4
    assert (
        value(
            found, "llmgateway_sync_changes_total", provider="openai", kind="keys", change="added"
        )
        == 2
    )
    assert (
        value(
            found, "llmgateway_keys", provider="openai", model="gpt-4o-mini", status="invalid_key"
        )
        == 1
    )
    assert value(found, "llmgateway_keys", provider="gemini", model="shared", status="valid") == 1
    # the Keeper's stored statuses in the gateway's words
    keeper_states = {"provider": "openai", "model": "gpt-4o-mini", "state": "invalid"}
    assert value(found, "llmgateway_key_states", **keeper_states) == 1
    assert (
        value(found, "llmgateway_key_states", provider="gemini", model="shared", state="healthy")
        == 1
    )
