"""Gateway traffic through real SOCKS5 proxies (microsocks), with the openai SDK as the client:
static and stealth mode, a login, a wrong password (an egress fault: no key blamed), socks5h
(the proxy resolves the upstream's host name), and a proxy killed while traffic flows (its keys
fail over, none is blamed, its egress breaker opens and the Keeper finds it dead).

Each microsocks binds its outgoing connections to its own loopback address, so the fake
upstream sees which proxy every request came through (`SeenRequest.peer`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from llmgateway.config.settings import Settings
from llmgateway.core.egress import egress_for
from llmgateway.core.outcomes import KeyStatus
from llmgateway.core.resilience import BreakerState
from llmgateway.keeper.run import Keeper
from llmgateway.store import Store, proxy_checks
from llmgateway.testing import Behavior
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.transport.upstream import HttpUpstream
from tests.helpers import (
    BREAKER,
    GEMINI_TOKEN,
    OPENAI_TOKEN,
    Running,
    eventually,
    start_gateway,
)
from tests.microsocks import MicroSocks

SocksFactory = Callable[..., MicroSocks]
KEYS = [f"sk-good-socks-{i:03d}-abcdefghij" for i in range(12)]
PASSWORD = "pa55-socks-secret"


def settings_for(
    tmp_path: Path, upstream: FakeUpstream | str, proxy: dict[str, Any], **openai_extra: Any
) -> Settings:
    retry = {
        "enabled": True,
        "on_key_error": {"attempts": 5, "backoff_sec": 0.0},
        "on_server_error": {"attempts": 5, "backoff_sec": 0.0},
    }
    document = two_providers(
        tmp_path,
        upstream,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        both={
            # the retry budget of the chaos tests: room for the concurrent clients' failovers
            "gateway_policy": {
                "retry": retry,
                "circuit_breaker": BREAKER,
                "retry_budget": {"percent": 20, "min_concurrent": 16},
            },
            "timeouts": {"connect": 2, "read": 5, "pool": 2},
        },
        openai={"shared_key_status": True, "proxy_config": proxy, **openai_extra},
        gateway={"refresh_interval_sec": 0.2},
    )
    return Settings.model_validate(document)


def client(gw: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=OPENAI_TOKEN, max_retries=0)


async def chat(sdk: openai.AsyncOpenAI) -> str:
    answer = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content or ""


async def no_key_marked(gw: Running) -> None:
    """No key was taken out of rotation, in the pool or the store."""
    assert gw.cooldowns() == {}
    gateway = gw.gateway
    assert gateway.writer is not None
    assert gateway.store is not None
    await gateway.writer.flush()
    snapshot = await gateway.store.snapshot()
    assert {r.status for r in snapshot.keys} <= {KeyStatus.VALID, KeyStatus.UNTESTED}
    now = gateway.clock()
    for provider in gateway.providers.values():
        assert provider.pool.ejected_count(now) == 0


def failed_attempts(gw: Running) -> dict[str, float]:
    """The openai provider's upstream attempts by reason (`ok` included)."""
    found = gw.samples("llmgateway_upstream_attempts_total")
    return {labels["reason"]: value for labels, value in found if labels["provider"] == "openai"}


def stealth_pool(tmp_path: Path, urls: list[str]) -> dict[str, Any]:
    pool = tmp_path / "proxies"
    pool.mkdir(exist_ok=True)
    (pool / "list.txt").write_text("\n".join(urls) + "\n")
    return {"mode": "stealth", "pool_list_path": str(pool)}


async def test_static_socks5_with_a_login_carries_the_traffic(
    tmp_path: Path, fake: FakeUpstream, socks_proxy: SocksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = socks_proxy(user="gw", password=PASSWORD, bind="127.0.0.2")
    write_keys(tmp_path / "keys" / "openai", KEYS[:3])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-socks-0001-abcdefgh"])
    static = {"mode": "static", "static_url": proxy.url()}
    async with start_gateway(settings_for(tmp_path, fake, static)) as gw, client(gw) as sdk:
        for _ in range(6):
            assert await chat(sdk)
        seen = [fake.last_request(k) for k in KEYS[:3]]
        assert {s.peer for s in seen if s is not None} == {"127.0.0.2"}  # all via the proxy
        assert proxy.targets()
        assert {port for _, port in proxy.targets()} == {fake.port}
        await no_key_marked(gw)
    assert PASSWORD not in caplog.text


async def test_a_wrong_socks_password_is_an_egress_fault_never_the_keys(
    tmp_path: Path, fake: FakeUpstream, socks_proxy: SocksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = socks_proxy(user="gw", password=PASSWORD)
    write_keys(tmp_path / "keys" / "openai", KEYS[:3])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-socks-0001-abcdefgh"])
    wrong = "wrong-pa55-never-shown"
    static = {"mode": "static", "static_url": proxy.url(password=wrong)}
    async with start_gateway(settings_for(tmp_path, fake, static)) as gw, client(gw) as sdk:
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as caught:
                await chat(sdk)
            assert caught.value.status_code in (502, 503)
            assert wrong not in caught.value.response.text
        assert sum(fake.calls_by_key().values()) == 0  # nothing got past the proxy
        assert proxy.targets() == []
        await no_key_marked(gw)
        states = gw.gateway.providers["openai"].guard.egress_states()
        assert set(states) == {static["static_url"]}
    assert wrong not in caplog.text
    assert PASSWORD not in caplog.text


async def test_socks5h_leaves_the_host_name_to_the_proxy(
    tmp_path: Path, fake: FakeUpstream, socks_proxy: SocksFactory
) -> None:
    proxy = socks_proxy(user="gw", password=PASSWORD)
    write_keys(tmp_path / "keys" / "openai", KEYS[:2])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-socks-0001-abcdefgh"])
    by_name = f"http://localhost:{fake.port}"
    static = {"mode": "static", "static_url": proxy.url("socks5h")}
    async with start_gateway(settings_for(tmp_path, by_name, static)) as gw, client(gw) as sdk:
        assert await chat(sdk)
    assert ("localhost", fake.port) in proxy.targets()  # the proxy was handed the name

    local = socks_proxy(user="gw", password=PASSWORD)  # socks5://: resolved here, an address
    static = {"mode": "static", "static_url": local.url("socks5")}
    async with start_gateway(settings_for(tmp_path, by_name, static)) as gw, client(gw) as sdk:
        assert await chat(sdk)
    assert local.targets()
    assert {host for host, _ in local.targets()} <= {"127.0.0.1", "::1"}


async def test_stealth_binds_each_key_to_its_socks_proxy(
    tmp_path: Path, fake: FakeUpstream, socks_proxy: SocksFactory
) -> None:
    proxies = [socks_proxy(user="gw", password=PASSWORD, bind=f"127.0.0.{n}") for n in (2, 3, 4)]
    by_url = {p.url(): p for p in proxies}
    write_keys(tmp_path / "keys" / "openai", KEYS)
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-socks-0001-abcdefgh"])
    settings = settings_for(tmp_path, fake, stealth_pool(tmp_path, list(by_url)))
    provider = settings.providers["openai"]
    async with start_gateway(settings) as gw, client(gw) as sdk:
        for _ in range(40):
            assert await chat(sdk)
        used = [k for k in KEYS if fake.calls(k)]
        assert len(used) >= 6
        for key in used:
            bound = by_url[egress_for(provider, key, list(by_url))]
            seen = fake.last_request(key)
            assert seen is not None
            assert seen.peer == bound.bind, key
        await no_key_marked(gw)


async def test_a_socks_proxy_killed_under_load_costs_no_key(
    tmp_path: Path, fake: FakeUpstream, socks_proxy: SocksFactory
) -> None:
    living = socks_proxy(user="gw", password=PASSWORD, bind="127.0.0.2")
    dying = socks_proxy(user="gw", password=PASSWORD, bind="127.0.0.3")
    write_keys(tmp_path / "keys" / "openai", KEYS)
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-socks-0001-abcdefgh"])
    settings = settings_for(tmp_path, fake, stealth_pool(tmp_path, [living.url(), dying.url()]))
    provider = settings.providers["openai"]
    behind_dying = [
        k for k in KEYS if egress_for(provider, k, [living.url(), dying.url()]) == dying.url()
    ]
    assert behind_dying
    assert len(behind_dying) < len(KEYS)
    for key in behind_dying:  # their answers take a while: some are in flight at the kill
        fake.set_behavior(key, Behavior(delay=0.4))
    async with start_gateway(settings) as gw, client(gw) as sdk:
        statuses: list[str] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                try:
                    await chat(sdk)
                    statuses.append("ok")
                except openai.APIError as error:
                    statuses.append(f"{type(error).__name__} {getattr(error, 'body', None)}")

        first = asyncio.gather(*(worker(15) for _ in range(6)))
        # killed with at least two requests waiting for their answer through it
        await eventually(lambda: len(statuses) >= 10 and fake.open_requests >= 2, within=20)
        in_flight = fake.open_requests
        dying.kill()
        killed_at = len(statuses)
        await first
        await asyncio.gather(*(worker(10) for _ in range(6)))

        # the requests cut in flight and those after the kill failed over to keys behind the
        # other proxy as egress faults: no client saw an error, the provider's breaker stayed
        # closed, the dead proxy's opened
        assert killed_at < len(statuses)
        assert statuses.count("ok") == len(statuses), [s for s in statuses if s != "ok"]
        guard = gw.gateway.providers["openai"].guard
        assert guard.egress_states().get(dying.url()) is BreakerState.OPEN
        assert guard.state is BreakerState.CLOSED
        assert failed_attempts(gw).get("egress_error", 0) >= in_flight
        assert set(failed_attempts(gw)) <= {"ok", "egress_error"}, failed_attempts(gw)
        await no_key_marked(gw)

        # and the Keeper's proxy check finds it dead, the living one alive
        store = gw.gateway.store
        assert isinstance(store, Store)
        upstream = HttpUpstream()
        try:
            found = await Keeper(settings, store, upstream).probe_proxies()
        finally:
            await upstream.close()
        assert (found.alive, found.dead) == (1, 1)
        healthy = (await proxy_checks.healthy_proxies(store))["openai"]
        assert healthy == [living.url()]
