"""Who may read `/metrics` and the details of `/readyz`, over real HTTP, on the gateway and on
the Keeper's own listener: nobody without a metrics token (`/metrics` is 404, as in the
original), the token's holder when one is set, everybody only with `allow_unauthenticated`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import keeper_listener, settings_with

TOKEN = "metrics-access-token-000001"
MINIMAL = {"ready": True, "problem": None}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_no_metrics_token_no_metrics_and_no_readiness_details(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_with(tmp_path, fake)  # the default: access_token empty
    async with running(create_app(settings)) as url, httpx.AsyncClient() as http:
        scrape = await http.get(f"{url}/metrics")
        scrape_with_any = await http.get(f"{url}/metrics", headers=bearer("anything-at-all"))
        ready = await http.get(f"{url}/readyz")
        ready_with_any = await http.get(f"{url}/readyz", headers=bearer("anything-at-all"))
    assert (scrape.status_code, scrape_with_any.status_code) == (404, 404)
    assert (ready.status_code, ready.json()) == (200, MINIMAL)
    assert ready_with_any.json() == MINIMAL


async def test_the_metrics_token_opens_metrics_and_readiness_details(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_with(tmp_path, fake, access_token=TOKEN)
    async with running(create_app(settings)) as url, httpx.AsyncClient() as http:
        missing = await http.get(f"{url}/metrics")
        wrong = await http.get(f"{url}/metrics", headers=bearer(TOKEN + "x"))
        right = await http.get(f"{url}/metrics", headers=bearer(TOKEN))
        plain = await http.get(f"{url}/readyz")
        wrongly = await http.get(f"{url}/readyz", headers=bearer(TOKEN[:-1]))
        detailed = await http.get(f"{url}/readyz", headers=bearer(TOKEN))
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert "llmgateway_requests_total" in right.text
    assert plain.json() == wrongly.json() == MINIMAL
    body = detailed.json()
    assert body["ready"] is True
    assert body["store_reachable"] is True
    assert set(body["providers"]) == {"openai", "gemini"}
    assert "warnings" in body


async def test_allow_unauthenticated_opens_both_on_purpose(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_with(tmp_path, fake, allow_unauthenticated=True)
    async with running(create_app(settings)) as url, httpx.AsyncClient() as http:
        scrape = await http.get(f"{url}/metrics")
        ready = await http.get(f"{url}/readyz")
    assert scrape.status_code == 200
    assert "llmgateway_requests_total" in scrape.text
    assert set(ready.json()["providers"]) == {"openai", "gemini"}


@pytest.mark.parametrize(
    ("metrics", "without", "with_token"),
    [
        ({}, 404, 404),
        ({"access_token": TOKEN}, 401, 200),
        ({"allow_unauthenticated": True}, 200, 200),
        ({"access_token": TOKEN, "allow_unauthenticated": True}, 200, 200),
    ],
)
async def test_the_keepers_listener_follows_the_same_rules(
    tmp_path: Path, fake: FakeUpstream, metrics: dict[str, Any], without: int, with_token: int
) -> None:
    settings = settings_with(tmp_path, fake, **metrics)
    async with keeper_listener(settings) as url, httpx.AsyncClient() as http:
        alive = await http.get(f"{url}/healthz")
        scrape = await http.get(f"{url}/metrics")
        scrape_with_token = await http.get(f"{url}/metrics", headers=bearer(TOKEN))
    assert alive.status_code == 200  # the health check works either way
    assert (scrape.status_code, scrape_with_token.status_code) == (without, with_token)
    if with_token == 200:
        assert "llmgateway_probes_total" in scrape_with_token.text
