"""No configured key or token ever shows: a broad end-to-end scenario (every fault of the fake,
both APIs, streaming, retries, the Keeper's probes, every debug mode) with every log line at
DEBUG, every metric exposition, every response body and header collected and searched."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import structlog

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import LoggingSettings, MetricsSettings
from llmgateway.keeper.run import run_once
from llmgateway.observe import logs
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, gateway_settings

METRICS_TOKEN = "metrics-token-never-shown-01"
OPENAI_KEYS = [
    "sk-good-openai-000000000001",
    "sk-proj-invalid-00000000000002",
    "sk-ratelimited-0000000000003",
    "sk-noquota-00000000000000004",
    "sk-flaky-0000000000000000005",
    "sk-drop-00000000000000000006",
    "plainkeywithnoprefix000007",  # no known shape: only the config tells it is a secret
]
GEMINI_KEYS = ["AIza-good-gemini-00000000001", "AIzaInvalidGemini000000000002"]
SECRETS = [*OPENAI_KEYS, *GEMINI_KEYS, OPENAI_TOKEN, GEMINI_TOKEN, METRICS_TOKEN]


@pytest.fixture
def log_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "logs"
    yield folder
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def traffic(url: str, seen: list[str]) -> None:
    """Every kind of request a client makes, good and bad; what came back goes to `seen`."""
    openai_auth = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    gemini_path = "/v1beta/models/gemini-2.5-flash"
    async with httpx.AsyncClient(timeout=30) as http:
        calls = [
            ("POST", "/v1/chat/completions", openai_auth, CHAT),
            ("POST", "/v1/chat/completions", openai_auth, {**CHAT, "stream": True}),
            ("POST", "/v1/chat/completions", openai_auth, {"model": "gpt-4o-mini"}),  # a 400
            ("GET", "/v1/models", openai_auth, None),
            ("POST", "/v1/chat/completions", {"authorization": "Bearer wrong-token"}, CHAT),
            ("POST", f"{gemini_path}:generateContent", {"x-goog-api-key": GEMINI_TOKEN}, {}),
            (
                "POST",
                f"{gemini_path}:streamGenerateContent?alt=sse&key={GEMINI_TOKEN}",
                {},
                {"contents": [{"parts": [{"text": "hi"}]}]},
            ),
            ("POST", "/v1/chat/completions", {"authorization": f"Bearer {GEMINI_TOKEN}"}, CHAT),
        ]
        for _ in range(4):
            for method, path, headers, body in calls:
                try:
                    answer = await http.request(method, url + path, headers=headers, json=body)
                except httpx.TransportError as error:  # a body cut upstream stays cut
                    seen.append(str(error))
                    continue
                seen.append(f"{answer.status_code} {dict(answer.headers)} {answer.text}")
        for path in ("/metrics", "/readyz", "/healthz"):
            answer = await http.get(
                url + path, headers={"authorization": f"Bearer {METRICS_TOKEN}"}
            )
            seen.append(answer.text)
        seen.append((await http.get(url + "/metrics")).text)  # refused: says why, not the token


@pytest.mark.parametrize("mode", ["disabled", "headers_only", "full_body"])
async def test_no_key_or_token_in_logs_metrics_or_answers(
    mode: str, tmp_path: Path, fake: FakeUpstream, log_folder: Path
) -> None:
    fake.set_behavior("AIzaInvalidGemini000000000002", Behavior(invalid=True))
    fake.set_behavior("plainkeywithnoprefix000007", Behavior(error_rate=1.0, error_status=503))
    write_keys(tmp_path / "keys" / "openai", OPENAI_KEYS)
    write_keys(tmp_path / "keys" / "gemini", GEMINI_KEYS)
    settings = gateway_settings(tmp_path, fake, gateway_policy={"debug_mode": mode})
    settings = settings.model_copy(
        update={
            "metrics": MetricsSettings(access_token=METRICS_TOKEN),
            "logging": LoggingSettings(level="DEBUG", format="json", dir=log_folder),
        }
    )
    logs.setup(settings, "all")
    seen: list[str] = []
    async with running(create_app(settings, rng=random.Random(3))) as url:
        await traffic(url, seen)
    async with await Store.open(settings.database.async_url) as store:
        summary = (await run_once(settings, store)).round
        assert summary.probed >= len(SECRETS) - 3  # every key probed (one row each)
    logged = (log_folder / "all.log").read_text()
    assert "request done" in logged
    assert "llmgateway.keeper" in logged
    if mode != "disabled":
        assert "upstream request" in logged
    everything = logged + "\n".join(seen)
    leaked = [secret for secret in SECRETS if secret in everything]
    assert leaked == []
