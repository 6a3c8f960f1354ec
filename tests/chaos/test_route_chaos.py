"""Chaos: a route over three providers under steady openai-SDK load while one provider has a
10 s outage and another is rate-limited throughout.

Route `fast`: `alpha` and `beta` (OpenAI-like) in the first tier, `gem` (Gemini, through its
OpenAI-compatible endpoint) behind them, each provider on its own fake upstream. `beta`'s keys
all answer 429 with a Retry-After for the whole run; `alpha` answers 503 to everything for
10 s. `gem` stays healthy, so a target with a healthy key exists at every instant: no client
may see an error at all. The route must fall back (counted in the route metrics, from alpha
on its outage and from beta on its rate limits), skip alpha once its breaker opens, and send
alpha traffic again once the outage is over and its breaker closed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from llmgateway.config.settings import Settings
from llmgateway.core.resilience import BreakerState
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import (
    BREAKER,
    BREAKER_RECOVERY_SEC,
    EJECTION,
    Running,
    eventually,
    start_gateway,
)

TOKEN = "gw-chaos-route-token-3b8e1f0c7a52"
OUTAGE_SEC = 10.0
CLIENTS = 12
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
KEYS = {
    "alpha": [f"sk-route-alpha-{i:08d}" for i in range(4)],
    # fewer than `egress_rate_limit.min_keys` (5): their egress is never proven rate-limited
    # as a whole, so each key must cool down on its own 429s
    "beta": [f"sk-route-beta-{i:08d}" for i in range(3)],
    "gem": [f"AIza-route-gem-{i:08d}" for i in range(4)],
}
MODELS = {"alpha": "gpt-a", "beta": "gpt-b", "gem": "gemini-2.5-flash"}
ROUTE = {
    "targets": [
        {"provider": "alpha", "model": "gpt-a"},
        {"provider": "beta", "model": "gpt-b"},
        {"provider": "gem", "model": "gemini-2.5-flash", "priority": 1},
    ],
}


@dataclass(frozen=True, slots=True)
class Result:
    """One client call: when it ended (monotonic), the target that answered, its error."""

    at: float
    target: str
    error: str | None


@dataclass(slots=True)
class RouteLoad:
    """`CLIENTS` openai-SDK clients asking route `fast`, streaming every other call."""

    url: str
    results: list[Result] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(CLIENTS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def errors(self) -> list[Result]:
        return [r for r in self.results if r.error is not None]

    def served_by(self, target: str, since: float = 0.0) -> int:
        return sum(1 for r in self.results if r.target == target and r.at >= since)

    async def _client(self, index: int) -> None:
        client = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=TOKEN, max_retries=0, timeout=15
        )
        turn = index
        try:
            while not self._stop.is_set():
                turn += 1
                self.results.append(await _one(client, stream=turn % 2 == 0))
        finally:
            await client.close()


async def _one(client: openai.AsyncOpenAI, *, stream: bool) -> Result:
    target = "?"
    try:
        create = client.chat.completions.with_raw_response.create
        if stream:
            streamed = await create(model="fast", messages=MESSAGES, stream=True)
            target = streamed.headers.get("x-llmgateway-target", "?")
            chunks = streamed.parse()
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            whole = await create(model="fast", messages=MESSAGES)
            target = whole.headers.get("x-llmgateway-target", "?")
            text = whole.parse().choices[0].message.content or ""
        assert text, "an empty answer"
    except Exception as error:  # every failure the client sees is a result to judge
        return Result(time.monotonic(), target, f"{type(error).__name__}: {str(error)[:160]}")
    return Result(time.monotonic(), target, None)


def route_chaos_settings(tmp_path: Path, fakes: dict[str, FakeUpstream]) -> Settings:
    """The three providers with the chaos resilience times (`tests.helpers.chaos_settings`)."""
    policy = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 4, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 2, "backoff_sec": 0.01},
        },
        "circuit_breaker": BREAKER,
        "outlier_detection": EJECTION,
        "retry_budget": {"percent": 20, "min_concurrent": 16},
    }
    providers: dict[str, Any] = {}
    for name, kind in (("alpha", "openai_like"), ("beta", "openai_like"), ("gem", "gemini")):
        fake, model = fakes[name], MODELS[name]
        suffix = "/chat/completions" if kind == "openai_like" else ":generateContent"
        providers[name] = {
            "provider_type": kind,
            "keys_path": str(write_keys(tmp_path / "keys" / name, KEYS[name]).parent),
            "api_base_url": fake.openai_base if kind == "openai_like" else fake.gemini_base,
            "default_model": model,
            "models": {model: {"endpoint_suffix": suffix}},
            "timeouts": {"connect": 0.5, "read": 2.0, "total": 10.0},
            "gateway_policy": policy,
        }
    document = {
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "gateway": {
            "refresh_interval_sec": 0.2,
            "tokens": [{"name": "chaos", "token": TOKEN, "routes": ["*"]}],
        },
        "providers": providers,
        "routes": {"fast": ROUTE},
    }
    return Settings.model_validate(document)


def route_samples(gw: Running, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in gw.samples(name)}


async def test_a_route_serves_every_request_through_an_outage_and_rate_limits(
    tmp_path: Path,
) -> None:
    async with FakeUpstream() as alpha, FakeUpstream() as beta, FakeUpstream() as gem:
        limited = Behavior(rate_limited=True, retry_after=2.0)
        for key in KEYS["beta"]:
            beta.set_behavior(key, limited)
        fakes = {"alpha": alpha, "beta": beta, "gem": gem}
        async with start_gateway(route_chaos_settings(tmp_path, fakes), seed=17) as gw:
            guard = gw.gateway.providers["alpha"].guard
            load = RouteLoad(gw.url)
            load.start()
            await eventually(lambda: len(load.results) >= 60, within=10)
            began = time.monotonic()
            alpha.set_outage(503, seconds=OUTAGE_SEC)
            await eventually(lambda: guard.state is BreakerState.OPEN, within=5)
            await eventually(lambda: time.monotonic() >= began + OUTAGE_SEC, within=OUTAGE_SEC + 1)
            ended = time.monotonic()
            await eventually(
                lambda: guard.state is BreakerState.CLOSED, within=BREAKER_RECOVERY_SEC + 2
            )
            closed = time.monotonic()
            await eventually(lambda: load.served_by("alpha/gpt-a", since=closed) >= 50, within=10)
            await load.stop()
            fallbacks = route_samples(gw, "llmgateway_route_fallbacks_total")
            exhausted = route_samples(gw, "llmgateway_route_exhausted_total")
            requests = route_samples(gw, "llmgateway_route_requests_total")
            alpha_ejected = gw.gateway.providers["alpha"].pool.ejected_count(gw.gateway.clock())
            beta_calls = sum(beta.calls_by_key().values())

    assert load.errors() == [], load.errors()[:5]
    assert ended - began >= OUTAGE_SEC
    served = {r.target for r in load.results}
    assert served <= {"alpha/gpt-a", "beta/gpt-b", "gem/gemini-2.5-flash"}, served
    assert load.served_by("gem/gemini-2.5-flash", since=began) > 0  # the outage's stand-in
    assert load.served_by("beta/gpt-b") == 0  # rate-limited throughout: never the answer
    # its keys cool down (Retry-After 2 s): asked on few requests, not on each (was ~3 each)
    assert beta_calls * 10 < len(load.results), (beta_calls, len(load.results))
    by_from: dict[tuple[str, str], float] = {}
    for labels, value in fallbacks.items():
        fields = dict(labels)
        assert fields["route"] == "fast"
        where = (fields["from_target"], fields["reason"])
        by_from[where] = by_from.get(where, 0.0) + value
    assert by_from.get(("beta/gpt-b", "rate_limited"), 0) > 0, by_from
    outage = sum(v for (source, _), v in by_from.items() if source == "alpha/gpt-a")
    assert outage > 0, by_from
    assert exhausted == {}, exhausted
    ok = requests.get((("outcome", "ok"), ("route", "fast")), 0.0)
    assert ok == len(load.results)
    assert alpha_ejected == 0  # a provider's outage blames none of its keys
