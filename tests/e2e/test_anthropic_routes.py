"""Routes with Anthropic targets over real HTTP, driven by the official SDKs: `/v1/messages`
with a gateway-wide token takes the aliases' Anthropic targets (falling back among them), the
OpenAI surface reaches Anthropic through its OpenAI-compatible endpoint, and an alias with no
Anthropic target is a 404 in Anthropic's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam

from llmgateway.config.settings import Settings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.anthropic_rig import GOOD_CLAUDE, MODEL, async_client, claude_provider, claude_settings
from tests.helpers import start_gateway

APP = "gw-app-token-claude-routes-0001"
SPARE = "sk-ant-good-spare-0000000001"
LONG = "claude-opus-4-1"
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
ROUTES = {
    "sonnet": {
        "targets": [
            {"provider": "claude", "model": MODEL, "priority": 0},
            {"provider": "spare", "model": MODEL, "priority": 1},
            {"provider": "openai", "model": "gpt-4o-mini", "priority": 2},
        ]
    },
    "gpt": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    "short": {
        "targets": [{"provider": "claude", "model": MODEL}],
        "context_length_fallback": "long",
    },
    "long": {"targets": [{"provider": "spare", "model": LONG}]},
}


def settings(tmp_path: Path, fake: FakeUpstream, keys: list[str] | None = None) -> Settings:
    """`claude` (keys `keys`) and `spare` (one good key) on the fake, with the routes above and
    a gateway token for them all."""
    base = claude_settings(tmp_path, fake, keys)
    document: dict[str, Any] = base.model_dump(mode="json", exclude_unset=True)
    write_keys(tmp_path / "keys" / "spare", [SPARE])
    models = {MODEL: {"endpoint_suffix": "/messages"}, LONG: {"endpoint_suffix": "/messages"}}
    spare = claude_provider(
        tmp_path, fake, keys_path=str(tmp_path / "keys" / "spare"), models=models
    )
    spare["access_control"] = {"gateway_access_token": "gw-spare-token-00000005"}
    document["providers"]["spare"] = spare
    document["routes"] = ROUTES
    document["gateway"] = {
        "refresh_interval_sec": 0.2,
        "tokens": [{"name": "app", "token": APP, "routes": ["*"], "providers": ["*"]}],
    }
    return Settings.model_validate(document)


async def test_messages_take_an_aliases_anthropic_targets(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with start_gateway(settings(tmp_path, fake)) as running:
        client = async_client(running.url, APP)
        reply = await client.messages.with_raw_response.create(
            model="sonnet", max_tokens=8, messages=HI
        )
        assert reply.headers["x-llmgateway-target"] == f"claude/{MODEL}"
        assert (await reply.parse()).content
        direct = await client.messages.create(model=f"spare/{MODEL}", max_tokens=8, messages=HI)
        assert direct.content
        listed = [m.id async for m in client.models.list()]
        await client.close()
    assert "sonnet" in listed
    assert "gpt" not in listed  # no Anthropic target
    assert fake.last_request(GOOD_CLAUDE) is not None
    assert fake.last_request(GOOD_CLAUDE).path == "/v1/messages"  # type: ignore[union-attr]
    assert fake.calls(SPARE) == 1


async def test_an_alias_without_anthropic_targets_is_an_anthropic_404(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with start_gateway(settings(tmp_path, fake)) as running:
        client = async_client(running.url, APP)
        with pytest.raises(anthropic.NotFoundError) as raised:
            await client.messages.create(model="gpt", max_tokens=8, messages=HI)
        await client.close()
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert fake.calls("sk-good-openai-000000000001") == 0


async def test_an_overloaded_or_mid_stream_failing_target_falls_back_unseen(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    over, cut = "sk-ant-over-claude-000001", "sk-ant-cut-claude-0000001"
    fake.set_behavior(over, Behavior(error_rate=1.0, error_status=529))
    fake.set_behavior(cut, Behavior(stream_error=529, stream_error_after=1))
    async with start_gateway(settings(tmp_path, fake, [over, cut])) as running:
        client = async_client(running.url, APP)
        for _ in range(4):
            reply = await client.messages.create(model="sonnet", max_tokens=8, messages=HI)
            assert reply.content
            async with client.messages.stream(model="sonnet", max_tokens=8, messages=HI) as s:
                assert [t async for t in s.text_stream] == ["Hello", " from", " the"]
        await client.close()
    assert fake.calls(SPARE) >= 4  # every stream (the cut key serves whole answers)


async def test_the_openai_surface_reaches_anthropic_through_its_openai_endpoint(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with start_gateway(settings(tmp_path, fake)) as running:
        client = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=APP, max_retries=0)
        reply = await client.chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        await client.close()
    seen = fake.last_request(GOOD_CLAUDE)
    assert seen is not None
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {GOOD_CLAUDE}"


async def test_a_prompt_too_long_goes_to_the_context_length_alias(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    fake.set_context_limits({MODEL: 64})  # Anthropic's 400 "prompt is too long: …"
    async with start_gateway(settings(tmp_path, fake)) as running:
        client = async_client(running.url, APP)
        reply = await client.messages.with_raw_response.create(
            model="short", max_tokens=8, messages=HI
        )
        await client.close()
    assert reply.headers["x-llmgateway-route"] == "long"
    assert reply.headers["x-llmgateway-target"] == f"spare/{LONG}"
    assert (await reply.parse()).content
    assert fake.calls(GOOD_CLAUDE) == 1
