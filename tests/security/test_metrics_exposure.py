"""What an unauthenticated caller learns from the operational endpoints, over real sockets: on a
default config nothing (`/metrics` 404 on the gateway and the Keeper, `/readyz` only whether it
is ready and why not); with a metrics token set, near misses of it are refused the same way."""

from __future__ import annotations

import random
from pathlib import Path

import httpx2 as httpx
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import keeper_listener, settings_with

pytestmark = pytest.mark.security

TOKEN = "metrics-exposure-token-0000001"
NEAR_MISSES = [
    {},
    {"authorization": "Bearer"},
    {"authorization": "Bearer null"},
    {"authorization": f"Bearer {TOKEN[:-1]}"},
    {"authorization": f"Bearer {TOKEN}0"},
    {"authorization": f"Bearer {TOKEN.upper()}"},
    {"authorization": f"Basic {TOKEN}"},
    {"authorization": TOKEN},
    {"x-api-key": TOKEN},
]


async def test_a_default_config_shows_nothing_to_strangers(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_with(tmp_path, fake)
    answers: list[httpx.Response] = []
    async with (
        running(create_app(settings, rng=random.Random(1))) as url,
        keeper_listener(settings) as keeper,
        httpx.AsyncClient() as http,
    ):
        for headers in NEAR_MISSES:
            answers.append(await http.get(f"{url}/metrics", headers=headers))
            answers.append(await http.get(f"{keeper}/metrics", headers=headers))
            ready = await http.get(f"{url}/readyz", headers=headers)
            assert ready.json() == {"ready": True, "problem": None}
    assert {answer.status_code for answer in answers} == {404}
    assert not any("llmgateway_" in answer.text for answer in answers)


async def test_near_misses_of_the_metrics_token_are_refused(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_with(tmp_path, fake, access_token=TOKEN)
    async with (
        running(create_app(settings, rng=random.Random(1))) as url,
        keeper_listener(settings) as keeper,
        httpx.AsyncClient() as http,
    ):
        for headers in NEAR_MISSES:
            for base in (url, keeper):
                refused = await http.get(f"{base}/metrics", headers=headers)
                assert refused.status_code == 401, headers
                assert "llmgateway_" not in refused.text
                assert TOKEN not in refused.text
            ready = await http.get(f"{url}/readyz", headers=headers)
            assert ready.json() == {"ready": True, "problem": None}, headers
