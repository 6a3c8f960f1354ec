"""A reload in the gateway app, served over loopback HTTP against the fake upstream on a real
SQLite store: a provider that stays keeps its pool (the key a stream holds stays held), its
breaker and its budget; one removed is gone; one added serves its keys; the tokens swap; the
stream started before finishes on what it started with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.load import load_settings
from llmgateway.keyfiles import run_sync
from llmgateway.reloading import Following, Outcome
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream

GOOD = "sk-good-openai-000000000001"
THIRD_KEY = "sk-good-openai-000000000003"
OLD = "gw-state-old-token-00001"
NEW = "gw-state-new-token-00002"
THIRD = "gw-state-third-token-003"


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"chunks": 8, "chunk_delay": 0.2}


def document(tmp_path: Path, fake: FakeUpstream, token: str) -> dict[str, Any]:
    return two_providers(
        tmp_path,
        fake,
        openai_token=token,
        gemini_token="gw-state-gemini-token-04",
        gateway={"refresh_interval_sec": 0.2},
    )


async def chat(url: str, token: str, model: str = "gpt-4o-mini") -> int:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
    return answer.status_code


async def test_a_reload_keeps_what_a_staying_provider_learnt(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    write_keys(tmp_path / "keys" / "third", [THIRD_KEY])
    config = tmp_path / "providers.yaml"
    before = document(tmp_path, fake, OLD)
    config.write_text(yaml.safe_dump(before))
    app: Any = create_app(load_settings(config), follow=Following(config, sighup=False))
    async with running(app) as url, httpx.AsyncClient(timeout=30) as http:
        conductor = app.state.conductor
        openai_before = conductor.providers["openai"]
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {OLD}"}
        async with http.stream(
            "POST", f"{url}/v1/chat/completions", headers=headers, json=request | {"stream": True}
        ) as stream:
            chunks = stream.aiter_bytes()
            received = [await anext(chunks)]
            (key_id,) = openai_before.pool.key_ids()
            assert openai_before.pool.inflight(key_id) == 1

            after = document(tmp_path, fake, "")
            after["providers"]["openai"]["access_control"] = {"gateway_access_tokens": [NEW]}
            after["providers"].pop("gemini")
            after["providers"]["third"] = dict(
                before["providers"]["openai"],
                keys_path=str(tmp_path / "keys" / "third"),
                access_control={"gateway_access_token": THIRD},
            )
            config.write_text(yaml.safe_dump(after))
            await run_sync(load_settings(config), conductor.store)  # the Keeper's part
            assert await app.state.follower.reload() is Outcome.APPLIED

            openai_after = conductor.providers["openai"]
            assert openai_after is not openai_before  # rebuilt from the new settings
            assert openai_after.pool is openai_before.pool  # its keys' state kept
            assert openai_after.guard is openai_before.guard
            assert openai_after.budget is openai_before.budget
            assert openai_after.pool.inflight(key_id) == 1, "the stream still holds its key"
            assert set(conductor.providers) == {"openai", "third"}
            assert await chat(url, NEW) == 200
            assert await chat(url, OLD) == 401
            assert await chat(url, THIRD) == 200
            async with httpx.AsyncClient() as other:
                gone = await other.post(
                    f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
                    headers={"x-goog-api-key": "gw-state-gemini-token-04"},
                    json={"contents": [{"parts": [{"text": "hi"}]}]},
                )
            assert gone.status_code == 401
            received += [chunk async for chunk in chunks]
        body = b"".join(received)
        assert stream.status_code == 200
        assert body.rstrip().endswith(b"data: [DONE]")
        assert body.count(b"data: {") == 8
        assert openai_after.pool.inflight(key_id) == 0


async def test_a_changed_breaker_policy_gets_a_new_breaker_and_keeps_the_pool(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    config = tmp_path / "providers.yaml"
    before = document(tmp_path, fake, OLD)
    config.write_text(yaml.safe_dump(before))
    app: Any = create_app(load_settings(config), follow=Following(config, sighup=False))
    async with running(app) as url:
        conductor = app.state.conductor
        old = conductor.providers["openai"]
        breaker = {"circuit_breaker": {"enabled": True, "failure_threshold": 3}}
        before["providers"]["openai"]["gateway_policy"] = breaker
        config.write_text(yaml.safe_dump(before))
        assert await app.state.follower.reload() is Outcome.APPLIED
        new = conductor.providers["openai"]
        assert new.guard is not old.guard
        assert new.pool is old.pool
        assert await chat(url, OLD) == 200
        assert await app.state.follower.reload() is Outcome.UNCHANGED
