"""Chaos fixtures: the real gateway on loopback with fast resilience settings, and a load of
concurrent official-SDK clients (openai AsyncOpenAI, google-genai; streaming and not) whose
every result is recorded with its time, so each scenario can say exactly when errors may occur.

Times are scaled down through the config (breaker backoff 1-2 s, ejections 2 s, read timeout
0.5 s); the outages keep the 10 s the issue names.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types

from llmgateway.conductor.app import Gateway, create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.testing.fake_upstream import FakeUpstream

OPENAI_TOKEN = "gw-chaos-openai-0001"
GEMINI_TOKEN = "gw-chaos-gemini-0002"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]

BREAKER = {
    "enabled": True,
    "failure_threshold": 5,
    "backoff": {"base_duration_sec": 1.0, "max_duration_sec": 2.0, "factor": 2.0},
    "jitter_sec": 0.2,
    "trial_calls": 2,
}
"""The breaker under chaos: opens after 5 provider-side failures in a row, half-open within
1-2.2 s. So a breaker recovers at most 2.2 s after its fault ends (plus one trial call)."""
BREAKER_RECOVERY_SEC = 2.2 + 1.0


def chaos_settings(
    tmp_path: Path, fake: FakeUpstream, database_url: str | None = None, **extra: Any
) -> Settings:
    """One openai_like provider `openai` and one `gemini` provider on the fake upstream."""
    policy: dict[str, Any] = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 10, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 3, "backoff_sec": 0.01},
        },
        "circuit_breaker": BREAKER,
        "outlier_detection": {
            "consecutive_failures": 2,
            "base_ejection_sec": 2.0,
            "max_ejection_sec": 4.0,
            "default_cooldown_sec": 2.0,
            "max_cooldown_sec": 4.0,
        },
        # the budget still caps retries; sized so the first burst onto unknown bad keys fits
        "retry_budget": {"percent": 20, "min_concurrent": 16},
        "egress_rate_limit": {"window_sec": 5, "min_keys": 4, "ratio": 0.8, "cooldown_sec": 3},
    }
    policy.update(extra.pop("gateway_policy", {}))
    timeouts = {"connect": 0.5, "read": 0.5, "total": 10}
    common: dict[str, Any] = {"gateway_policy": policy, "timeouts": timeouts, **extra}
    url = database_url or f"sqlite:///{tmp_path / 'chaos.db'}"
    data = {
        "database": {"url": url},
        "gateway": {"refresh_interval_sec": 0.2},
        "providers": {
            "openai": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys" / "openai"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": OPENAI_TOKEN},
                **common,
            },
            "gemini": {
                "provider_type": "gemini",
                "keys_path": str(tmp_path / "keys" / "gemini"),
                "api_base_url": fake.gemini_base,
                "default_model": "gemini-2.5-flash",
                "shared_key_status": True,
                "models": {"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
                "access_control": {"gateway_access_token": GEMINI_TOKEN},
                **common,
            },
        },
    }
    return Settings.model_validate(data)


def write_keys(tmp_path: Path, provider: str, keys: list[str]) -> None:
    folder = tmp_path / "keys" / provider
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keys.txt").write_text("\n".join(keys) + "\n")


@dataclass(frozen=True, slots=True)
class Running:
    """A started gateway: its URL and the process object (pools, guards, writer, upstream)."""

    url: str
    gateway: Gateway
    app: Any

    def cooldowns(self) -> dict[tuple[str, str], float]:
        """`llmgateway_key_cooldowns_total` by (provider, reason): every key the gateway took
        out of rotation (ejected, cooled, invalidated) since it started."""
        registry = self.app.state.edge.conductor.metrics.registry
        found: dict[tuple[str, str], float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "llmgateway_key_cooldowns_total":
                    key = (sample.labels["provider"], sample.labels["reason"])
                    found[key] = sample.value
        return found


@contextlib.asynccontextmanager
async def start_gateway(settings: Settings) -> AsyncIterator[Running]:
    app = create_app(settings, rng=random.Random(11))
    async with running(app) as url:
        # create_app is typed ASGIApp; the router it returns carries .state
        yield Running(url, app.state.gateway, app)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Result:
    """One client call: when it ended (monotonic), what it was, and its error (None: fine)."""

    at: float
    kind: str
    error: str | None
    status: int | None


@dataclass(slots=True)
class Load:
    """`clients` concurrent SDK callers cycling through the kinds until `stop()`."""

    url: str
    clients: int = 12
    kinds: tuple[str, ...] = ("openai", "openai-stream", "gemini", "gemini-stream")
    results: list[Result] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(index), name=f"load-{index}")
            for index in range(self.clients)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def errors(self, since: float = 0.0, until: float = float("inf")) -> list[Result]:
        return [r for r in self.results if r.error is not None and since <= r.at <= until]

    def ok(self, since: float = 0.0, until: float = float("inf")) -> list[Result]:
        return [r for r in self.results if r.error is None and since <= r.at <= until]

    async def _client(self, index: int) -> None:
        oa = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=OPENAI_TOKEN, max_retries=0, timeout=15
        )
        options = types.HttpOptions(
            base_url=self.url, retry_options=types.HttpRetryOptions(attempts=1), timeout=15_000
        )
        gm = genai.Client(api_key=GEMINI_TOKEN, http_options=options)
        turn = index
        try:
            while not self._stop.is_set():
                kind = self.kinds[turn % len(self.kinds)]
                turn += 1
                error, status = await _one(kind, oa, gm)
                self.results.append(Result(time.monotonic(), kind, error, status))
        finally:
            await oa.close()
            await gm.aio.aclose()


async def _one(
    kind: str, oa: openai.AsyncOpenAI, gm: genai.Client
) -> tuple[str | None, int | None]:
    try:
        if kind == "openai":
            reply = await oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert reply.choices[0].message.content
        elif kind == "openai-stream":
            stream = await oa.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text
        elif kind == "gemini":
            answer = await gm.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
            assert answer.text
        else:
            chunks = await gm.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hi"
            )
            assert "".join([c.text or "" async for c in chunks])
    except openai.APIStatusError as error:
        return f"{type(error).__name__}: {error.message[:120]}", error.status_code
    except Exception as error:  # every failure the client sees is a result to judge
        status = getattr(error, "code", None)
        return f"{type(error).__name__}: {str(error)[:120]}", status if isinstance(
            status, int
        ) else None
    return None, None


async def eventually(check: Callable[[], bool], within: float, step: float = 0.05) -> float:
    """Wait until `check()` holds (polling); returns how long it took; fails after `within` s."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {check}")
        await asyncio.sleep(step)
    return time.monotonic() - started


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(chunks=3) as upstream:
        yield upstream


def leaks(gateway: Gateway, fake: FakeUpstream) -> dict[str, int]:
    """What must be zero once the load stopped: requests open at the fake, and gateway
    connections still checked out (idle keep-alive connections are pooled, not leaked)."""
    acquired = 0
    for session in gateway.upstream._sessions.values():
        connector = session.connector
        if connector is not None and not connector.closed:
            acquired += len(connector._acquired)
    inflight = sum(
        provider.pool.inflight(key_id)
        for provider in gateway.providers.values()
        for key_id in range(1, 200)
    )
    return {"fake_open": fake.open_requests, "acquired": acquired, "inflight": inflight}
