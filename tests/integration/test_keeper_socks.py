"""The Keeper through real SOCKS5 proxies (microsocks), on SQLite and PostgreSQL: key probes in
static and stealth mode (with a login), and proxy health checks finding a working SOCKS proxy
alive and an unreachable or refusing one dead, with the password in no stored message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tests.helpers import ManualClock, free_port
from tests.integration.test_keeper import GOOD, config, keeper_for, proxy_rows, rows
from tests.microsocks import MicroSocks

from llmgateway.core.egress import egress_for
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.probes import HOUR
from llmgateway.store import Store, proxy_checks
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream, Upstream

SocksFactory = Callable[..., MicroSocks]
PASSWORD = "pa55-keeper-socks"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sessions = HttpUpstream()
    yield sessions
    await sessions.close()


async def test_static_socks5_carries_every_key_probe(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    socks_proxy: SocksFactory,
) -> None:
    proxy = socks_proxy(user="keeper", password=PASSWORD, bind="127.0.0.2")
    write_keys(tmp_path / "keys", GOOD)
    settings = config(tmp_path, fake, proxy={"mode": "static", "static_url": proxy.url()})
    keeper = await keeper_for(settings, store, clock, upstream)
    summary = await keeper.probe_round()
    assert summary.healthy == 3
    for key in GOOD:
        seen = fake.last_request(key)
        assert seen is not None
        assert seen.peer == "127.0.0.2"


async def test_a_refusing_static_socks_proxy_never_marks_a_key(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    socks_proxy: SocksFactory,
) -> None:
    proxy = socks_proxy(user="keeper", password=PASSWORD)
    write_keys(tmp_path / "keys", GOOD)
    wrong = proxy.url(password="not-the-password")
    keeper = await keeper_for(
        config(tmp_path, fake, proxy={"mode": "static", "static_url": wrong}),
        store,
        clock,
        upstream,
    )
    await keeper.probe_round()
    clock.advance(1 * HOUR)
    summary = await keeper.probe_round()
    assert (summary.egress, summary.failed) == (3, 0)
    assert sum(fake.calls_by_key().values()) == 0
    for state in (await rows(store)).values():
        assert state["status"] == KeyStatus.UNTESTED
        assert state["failing_since"] is None
        assert "not-the-password" not in (state["error_message"] or "")


async def test_stealth_socks_proxies_bind_keys_and_are_checked(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    socks_proxy: SocksFactory,
) -> None:
    secrets = [f"sk-good-socks-stealth-{i:03d}-ab" for i in range(20)]
    write_keys(tmp_path / "keys", secrets)
    living = [socks_proxy(user="keeper", password=PASSWORD, bind=f"127.0.0.{n}") for n in (2, 3)]
    refusing = socks_proxy(user="keeper", password=PASSWORD)
    unreachable = f"socks5h://keeper:{PASSWORD}@127.0.0.1:{free_port()}"
    urls = [p.url() for p in living]
    pool = tmp_path / "proxies"
    pool.mkdir()
    listed = [*urls, refusing.url("socks5h", password="wrong-password"), unreachable]
    (pool / "list.txt").write_text("\n".join(listed) + "\n")
    settings = config(tmp_path, fake, proxy={"mode": "stealth", "pool_list_path": str(pool)})
    provider = settings.providers["p1"]
    keeper = await keeper_for(settings, store, clock, upstream)

    found = await keeper.probe_proxies()
    assert (found.alive, found.dead) == (2, 2)
    assert sorted((await proxy_checks.healthy_proxies(store))["p1"]) == sorted(urls)
    dead = {r["error_message"] for r in await proxy_rows(store) if r["status"] != "valid"}
    assert len(dead) == 2
    assert any("refused" in m and "authentication" in m for m in dead), dead
    assert any("cannot connect to the SOCKS proxy" in m for m in dead), dead
    assert not any(PASSWORD in m or "wrong-password" in m for m in dead)

    summary = await keeper.probe_round()
    assert summary.healthy == len(secrets)
    by_url = {p.url(): p for p in living}
    for secret in secrets:
        seen = fake.last_request(secret)
        assert seen is not None
        assert seen.peer == by_url[egress_for(provider, secret, urls)].bind

    living[0].kill()  # dies: the next check finds it dead, the other stays alive
    clock.advance(settings.worker.proxy_check_interval_sec)
    found = await keeper.probe_proxies()  # the two found dead before are due again too
    assert (found.alive, found.dead) == (1, 3)
    assert (await proxy_checks.healthy_proxies(store))["p1"] == [urls[1]]
    living[0].restart()
    clock.advance(settings.worker.proxy_retry_sec)
    assert (await keeper.probe_proxies()).alive == 1
    assert sorted((await proxy_checks.healthy_proxies(store))["p1"]) == sorted(urls)
