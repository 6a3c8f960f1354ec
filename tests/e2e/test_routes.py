"""Routes over real HTTP: the gateway with a gateway-wide token, three providers each on its own
fake upstream (`alpha` and `beta` OpenAI-like, `gem` Gemini), driven by the official SDKs.

Each test gives the providers' keys a behaviour by name (`ratelimited`, `streamerror`, …, see
`testing.faults`) and checks which upstreams were called, what the client got, and the
`x-llmgateway-*` headers that say which target answered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from google import genai
from google.genai import types
from openai.types.chat import ChatCompletionMessageParam

from llmgateway.config.settings import Settings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import start_gateway

APP = "gw-app-token-routes-0000000001"
CHEAP_ONLY = "gw-cheap-token-routes-00000001"
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
RETRY = {
    "enabled": True,
    "on_key_error": {"attempts": 3, "backoff_sec": 0.0},
    "on_server_error": {"attempts": 2, "backoff_sec": 0.0},
}


@dataclass(frozen=True, slots=True)
class Fakes:
    """One fake upstream per provider."""

    alpha: FakeUpstream
    beta: FakeUpstream
    gem: FakeUpstream


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as g:
        yield Fakes(a, b, g)


def _provider(
    kind: str, fake: FakeUpstream, folder: Path, model: str, policy: dict[str, Any], **extra: Any
) -> Any:
    openai_like = kind == "openai_like"
    return {
        "provider_type": kind,
        "keys_path": str(folder),
        "api_base_url": fake.openai_base if openai_like else fake.gemini_base,
        "default_model": model,
        "models": {
            model: {"endpoint_suffix": "/chat/completions" if openai_like else ":generateContent"}
        },
        "gateway_policy": {"retry": RETRY, **policy},
        **extra,
    }


def route_settings(
    tmp_path: Path,
    fakes: Fakes,
    keys: dict[str, list[str]],
    routes: dict[str, Any],
    timeouts: dict[str, float] | None = None,
    policy: dict[str, Any] | None = None,
) -> Settings:
    """`alpha` (model gpt-a), `beta` (gpt-b) and `gem` (gemini-2.5-flash), with `keys` per
    provider (a good one where none is given), `routes`, and two gateway tokens: APP may use
    every route and provider, CHEAP_ONLY only routes named `cheap*`."""
    providers = {}
    models = {"alpha": "gpt-a", "beta": "gpt-b", "gem": "gemini-2.5-flash"}
    for name, kind in (("alpha", "openai_like"), ("beta", "openai_like"), ("gem", "gemini")):
        default = "AIza-good-gem-0000000001" if kind == "gemini" else f"sk-good-{name}-0001"
        folder = write_keys(tmp_path / "keys" / name, keys.get(name, [default])).parent
        extra = {"timeouts": timeouts} if timeouts else {}
        fake = getattr(fakes, name)
        providers[name] = _provider(kind, fake, folder, models[name], policy or {}, **extra)
    tokens = [
        {"name": "app", "token": APP, "routes": ["*"], "providers": ["*"]},
        {"name": "cheap", "token": CHEAP_ONLY, "routes": ["cheap*"]},
    ]
    document = {
        "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
        "gateway": {"refresh_interval_sec": 0.2, "tokens": tokens},
        "providers": providers,
        "routes": routes,
    }
    return Settings.model_validate(document)


FALLBACK = {
    "targets": [
        {"provider": "alpha", "model": "gpt-a"},
        {"provider": "beta", "model": "gpt-b", "priority": 1},
    ]
}
"""alpha first, then beta."""


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[str]:
    async with start_gateway(settings, seed=5) as running:
        yield running.url


def client(url: str, token: str = APP) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


async def chat(url: str, model: str = "fast", **extra: Any) -> Any:
    """A chat completion, with the raw response (its headers)."""
    return await client(url).chat.completions.with_raw_response.create(
        model=model, messages=CHAT, **extra
    )


def target_of(raw: Any) -> str:
    return str(raw.headers["x-llmgateway-target"])


async def test_falls_back_on_rate_limits_then_skips_the_cooling_target_without_a_call(
    tmp_path: Path, fakes: Fakes
) -> None:
    limited = "sk-ratelimited-alpha-0001"
    settings = route_settings(tmp_path, fakes, {"alpha": [limited]}, {"fast": FALLBACK})
    async with gateway(settings) as url:
        first = await chat(url)
        assert first.parse().choices[0].message.content
        assert (target_of(first), first.headers["x-llmgateway-route"]) == ("beta/gpt-b", "fast")
        assert first.headers["x-llmgateway-attempts"] == "2"
        assert fakes.alpha.calls(limited) == 1
        second = await chat(url)
        assert target_of(second) == "beta/gpt-b"
        assert second.headers["x-llmgateway-attempts"] == "1"
    assert fakes.alpha.calls(limited) == 1  # cooling: left out of the plan, no call
    last = fakes.beta.last_request("sk-good-beta-0001")
    assert last is not None
    assert b'"model":"gpt-b"' in last.body  # only the model was rewritten
    assert APP not in str(last.headers)


async def test_a_cooling_first_target_takes_no_place_of_the_cap(
    tmp_path: Path, fakes: Fakes
) -> None:
    """The first target is drawn without asking whether it has a usable key: its attempt
    finds none, without an upstream call, and it is skipped as the plan skips the ineligible,
    so a route that tries one target only still reaches the next."""
    limited = "sk-ratelimited-alpha-0001"
    one = {**FALLBACK, "max_targets": 1}
    settings = route_settings(tmp_path, fakes, {"alpha": [limited]}, {"fast": FALLBACK, "one": one})
    async with gateway(settings) as url:
        await chat(url)  # alpha's key answers 429 and cools down; beta answers
        answered = await chat(url, "one")
        assert answered.parse().choices[0].message.content
        assert (target_of(answered), answered.headers["x-llmgateway-attempts"]) == (
            "beta/gpt-b",
            "1",
        )
    assert fakes.alpha.calls(limited) == 1  # only the first request's


@pytest.mark.parametrize(
    "behavior",
    [Behavior(error_rate=1.0, error_status=500), Behavior(error_rate=1.0, error_status=503)],
)
async def test_falls_back_on_server_errors(
    tmp_path: Path, fakes: Fakes, behavior: Behavior
) -> None:
    bad = ["sk-broken-alpha-0001", "sk-broken-alpha-0002", "sk-broken-alpha-0003"]
    for key in bad:
        fakes.alpha.set_behavior(key, behavior)
    settings = route_settings(tmp_path, fakes, {"alpha": bad}, {"fast": FALLBACK})
    async with gateway(settings) as url:
        answered = await chat(url)
    assert target_of(answered) == "beta/gpt-b"
    # the target's own retries on other keys first (on_server_error: 2 attempts)
    assert sum(fakes.alpha.calls(key) for key in bad) == 2
    assert answered.headers["x-llmgateway-attempts"] == "3"


async def test_falls_back_when_a_target_times_out_and_on_invalid_keys(
    tmp_path: Path, fakes: Fakes
) -> None:
    keys = {"alpha": ["sk-hang-alpha-0001"], "beta": ["sk-invalid-beta-0001"]}
    routes = {
        "fast": FALLBACK,
        "mixed": {
            "targets": [
                {"provider": "beta", "model": "gpt-b"},
                {"provider": "gem", "model": "gemini-2.5-flash", "priority": 1},
            ]
        },
    }
    timeouts = {"connect": 1.0, "read": 0.3, "total": 5.0}
    settings = route_settings(tmp_path, fakes, keys, routes, timeouts)
    async with gateway(settings) as url:
        with pytest.raises(openai.APIStatusError) as failed:
            await chat(url)  # alpha hangs, beta's only key is invalid
        assert failed.value.status_code in (502, 503, 504)
        answered = await chat(url, "mixed")  # beta's key is known invalid now: gem answers
        assert target_of(answered) == "gem/gemini-2.5-flash"
    assert fakes.gem.calls("AIza-good-gem-0000000001") == 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_client_fault_is_passed_through_and_never_falls_back(
    tmp_path: Path, fakes: Fakes, status: int
) -> None:
    key = "sk-picky-alpha-0001"
    fakes.alpha.set_behavior(key, Behavior(error_rate=1.0, error_status=status))
    settings = route_settings(tmp_path, fakes, {"alpha": [key]}, {"fast": FALLBACK})
    async with gateway(settings) as url:
        with pytest.raises(openai.APIStatusError) as failed:
            await chat(url)
    assert failed.value.status_code == status
    assert failed.value.response.headers["x-llmgateway-target"] == "alpha/gpt-a"
    assert fakes.alpha.calls(key) == 1
    assert fakes.beta.calls("sk-good-beta-0001") == 0


async def test_context_length_goes_to_the_context_alias_only(tmp_path: Path, fakes: Fakes) -> None:
    routes = {
        "fast": {
            "targets": [
                {"provider": "alpha", "model": "gpt-a"},
                {"provider": "gem", "model": "gemini-2.5-flash", "priority": 1},
            ],
            "context_length_fallback": "long",
        },
        "long": {"targets": [{"provider": "beta", "model": "gpt-b"}]},
        "plain": {"targets": [{"provider": "alpha", "model": "gpt-a"}]},
    }
    settings = route_settings(tmp_path, fakes, {"alpha": ["sk-contextlength-a-1"]}, routes)
    async with gateway(settings) as url:
        answered = await chat(url)
        assert (answered.headers["x-llmgateway-route"], target_of(answered)) == (
            "long",
            "beta/gpt-b",
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await chat(url, "plain")  # no alias: the upstream's answer, passed through
        assert "context" in str(refused.value.body).lower()
    assert fakes.gem.calls("AIza-good-gem-0000000001") == 0  # never the same route's next target


async def test_a_model_the_upstream_does_not_have_falls_back_with_a_config_warning(
    tmp_path: Path, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.alpha.set_missing_models(["gpt-a"])
    settings = route_settings(tmp_path, fakes, {}, {"fast": FALLBACK})
    with caplog.at_level(logging.WARNING, logger="llmgateway.api"):
        async with gateway(settings) as url:
            assert target_of(await chat(url)) == "beta/gpt-b"
    assert any(
        "alpha/gpt-a" in r.getMessage() and "does not exist" in r.getMessage()
        for r in caplog.records
    )


async def test_a_stream_that_starts_with_an_error_falls_back_under_first_event_only(
    tmp_path: Path, fakes: Fakes
) -> None:
    routes = {"fast": FALLBACK, "quick": {**FALLBACK, "stream_commit": "first_byte"}}
    keys = {"alpha": ["sk-streamerror-alpha-1"]}
    settings = route_settings(tmp_path, fakes, keys, routes)
    async with gateway(settings) as url:
        raw = await chat(url, stream=True)
        assert target_of(raw) == "beta/gpt-b"
        pieces = [c.choices[0].delta.content async for c in raw.parse() if c.choices]
        assert "".join(p for p in pieces if p)
        committed = await chat(url, "quick", stream=True)
        assert target_of(committed) == "alpha/gpt-a"  # the 200 was relayed at once
        with pytest.raises(openai.APIError):
            async for _ in committed.parse():
                pass
    assert fakes.beta.calls("sk-good-beta-0001") == 1


async def test_an_empty_stream_falls_back(tmp_path: Path, fakes: Fakes) -> None:
    settings = route_settings(
        tmp_path, fakes, {"alpha": ["sk-emptystream-alpha-1"]}, {"fast": FALLBACK}
    )
    async with gateway(settings) as url:
        raw = await chat(url, stream=True)
        assert target_of(raw) == "beta/gpt-b"
        assert [c async for c in raw.parse()]


async def test_every_target_rate_limited_is_a_429_with_the_smallest_retry_after(
    tmp_path: Path, fakes: Fakes
) -> None:
    alpha, beta = "sk-slowdown-alpha-1", "sk-slowdown-beta-1"
    fakes.alpha.set_behavior(alpha, Behavior(rate_limited=True, retry_after=30.0))
    fakes.beta.set_behavior(beta, Behavior(rate_limited=True, retry_after=7.0))
    settings = route_settings(
        tmp_path, fakes, {"alpha": [alpha], "beta": [beta]}, {"fast": FALLBACK}
    )
    async with gateway(settings) as url:
        for _ in range(2):  # the second finds both cooling: no call, the same answer
            with pytest.raises(openai.RateLimitError) as limited:
                await chat(url)
            assert 6 <= int(limited.value.response.headers["retry-after"]) <= 7
    assert (fakes.alpha.calls(alpha), fakes.beta.calls(beta)) == (1, 1)


async def test_the_deadline_bounds_every_fallback(tmp_path: Path, fakes: Fakes) -> None:
    timeouts = {"connect": 1.0, "read": 10.0, "total": 1.5}
    keys = {"alpha": ["sk-hang-alpha-0001"]}
    settings = route_settings(tmp_path, fakes, keys, {"fast": FALLBACK}, timeouts)
    async with gateway(settings) as url:
        with pytest.raises(openai.APIStatusError) as failed:
            await chat(url)
    assert failed.value.status_code == 504
    assert fakes.beta.calls("sk-good-beta-0001") == 0  # no time was left for it


async def test_the_retry_budget_bounds_fallbacks(tmp_path: Path, fakes: Fakes) -> None:
    bad = "sk-broken-alpha-0001"
    fakes.alpha.set_behavior(bad, Behavior(error_rate=1.0, error_status=500))
    no_room = {"retry_budget": {"percent": 0, "min_concurrent": 0}}
    settings = route_settings(tmp_path, fakes, {"alpha": [bad]}, {"fast": FALLBACK}, policy=no_room)
    async with gateway(settings) as url:
        with pytest.raises(openai.InternalServerError):
            await chat(url)
    assert fakes.beta.calls("sk-good-beta-0001") == 0


async def test_gemini_native_surface_serves_only_gemini_targets(
    tmp_path: Path, fakes: Fakes
) -> None:
    routes = {
        "smart": {
            "targets": [
                {"provider": "alpha", "model": "gpt-a"},
                {"provider": "gem", "model": "gemini-2.5-flash", "priority": 1},
            ]
        }
    }
    settings = route_settings(tmp_path, fakes, {"alpha": ["sk-ratelimited-alpha-1"]}, routes)
    options = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
    async with gateway(settings) as url:
        native = genai.Client(
            api_key=APP, http_options=options.model_copy(update={"base_url": url})
        )
        reply = await native.aio.models.generate_content(model="smart", contents="hi")
        assert reply.text
        streamed = [
            c.text
            async for c in await native.aio.models.generate_content_stream(
                model="smart", contents="hi"
            )
        ]
        assert "".join(t for t in streamed if t)
        listed = [m.name async for m in await native.aio.models.list()]
        assert "models/smart" in listed or "smart" in listed
        via_openai = await chat(url, "smart")  # alpha is cooling: gem, OpenAI-compatible
        assert target_of(via_openai) == "gem/gemini-2.5-flash"
    assert fakes.alpha.calls("sk-ratelimited-alpha-1") == 1  # only the OpenAI-surface request


async def test_models_resolution_and_token_reach(tmp_path: Path, fakes: Fakes) -> None:
    routes = {"fast": FALLBACK, "cheap-chat": {"targets": [{"provider": "beta", "model": "gpt-b"}]}}
    settings = route_settings(tmp_path, fakes, {}, routes)
    async with gateway(settings) as url:
        listed = sorted(m.id for m in (await client(url).models.list()).data)
        assert listed == ["alpha/gpt-a", "beta/gpt-b", "cheap-chat", "fast", "gem/gemini-2.5-flash"]
        cheap = sorted(m.id for m in (await client(url, CHEAP_ONLY).models.list()).data)
        assert cheap == ["cheap-chat"]
        direct = await chat(url, "alpha/gpt-a")
        assert direct.parse().choices[0].message.content
        assert "x-llmgateway-route" not in direct.headers  # one provider's model: no route
        for token, model in ((APP, "nobody/gpt-a"), (APP, "nothing"), (CHEAP_ONLY, "fast")):
            with pytest.raises(openai.NotFoundError) as missing:
                await client(url, token).chat.completions.create(model=model, messages=CHAT)
            assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
        async with httpx.AsyncClient() as raw:
            wrong = await raw.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": "Bearer gw-not-a-token-000000000"},
                json={"model": "fast", "messages": CHAT},
            )
        assert wrong.status_code == 401


async def test_headers_can_be_turned_off_and_route_metrics_are_counted(
    tmp_path: Path, fakes: Fakes
) -> None:
    routes = {"fast": {**FALLBACK, "headers": False}}
    settings = route_settings(tmp_path, fakes, {"alpha": ["sk-ratelimited-alpha-1"]}, routes)
    async with start_gateway(settings, seed=5) as running:
        answered = await chat(running.url)
        assert not [h for h in answered.headers if h.startswith("x-llmgateway-")]
        metrics = running.app.state.edge.attempt_loop.metrics
        metrics.flush()  # the request counts since the last scrape
        registry = metrics.registry
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
        }
    ok = ("llmgateway_route_requests_total", (("outcome", "ok"), ("route", "fast")))
    assert samples[ok] == 1
    fell = (
        "llmgateway_route_fallbacks_total",
        (
            ("from_target", "alpha/gpt-a"),
            ("reason", "rate_limited"),
            ("route", "fast"),
            ("to_target", "beta/gpt-b"),
        ),
    )
    assert samples[fell] == 1


async def test_a_stream_held_for_its_first_event_reaches_the_client_whole(
    tmp_path: Path, fakes: Fakes
) -> None:
    beta = {"targets": [{"provider": "beta", "model": "gpt-b"}]}
    routes = {"held": beta, "at-once": {**beta, "stream_commit": "first_byte"}}
    settings = route_settings(tmp_path, fakes, {}, routes)
    async with gateway(settings) as url:
        texts = []
        for alias in ("held", "at-once"):
            raw = await chat(url, alias, stream=True)
            chunks = [c async for c in raw.parse()]
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert texts[0]
    assert texts[0] == texts[1]  # the bytes the peek held went out first, none lost
