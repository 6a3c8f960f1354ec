"""Chaos: a provider-wide 503 outage of 10 s, and an outbound proxy dying, under SDK load.

Provider outage. No healthy key exists while it lasts, so clients may get 503s: the upstream's
own until the breaker opens (5 provider-side failures in a row), then the gateway's fast-fail
503 with Retry-After. Outside [outage start, breaker closed again] there must be no error at
all; the breaker must close within its configured backoff (≤ 2.2 s + one trial) after the
outage ends; no key may be ejected in the pool or marked in the store.

Proxy death (stealth mode, three proxies). Keys behind the other proxies stay healthy, so no
request may fail, except streams that were mid-body through the proxy at the instant it died
(they cannot be retried after their first byte); the proxy's egress breaker opens, keys behind
it are skipped and never blamed, and once the proxy is back its breaker closes and its keys
serve again within the breaker's backoff.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from llmgateway.core.egress import egress_for
from llmgateway.core.outcomes import KeyStatus
from llmgateway.core.resilience import BreakerState
from llmgateway.testing.configs import write_keys
from llmgateway.testing.connect_proxy import ConnectProxy
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.chaos.load import Load, leaks
from tests.helpers import BREAKER_RECOVERY_SEC, Running, chaos_settings, eventually, start_gateway

OPENAI_KEYS = [f"sk-outage-good-{i:08d}" for i in range(10)]
GEMINI_KEYS = [f"AIza-outage-good-{i:08d}" for i in range(6)]
OUTAGE_SEC = 10.0


async def no_key_marked(gw: Running) -> None:
    """The gateway never took a key out of rotation, and neither the pool nor the store holds
    one as anything but healthy."""
    assert gw.cooldowns() == {}
    gateway = gw.gateway
    assert gateway.writer is not None
    assert gateway.store is not None
    await gateway.writer.flush()
    snapshot = await gateway.store.snapshot()
    marked = [
        r.status for r in snapshot.keys if r.status not in (KeyStatus.VALID, KeyStatus.UNTESTED)
    ]
    assert marked == []
    now = gateway.clock()
    for provider in gateway.providers.values():
        assert provider.pool.ejected_count(now) == 0
        counts = provider.pool.counts(now)
        assert {state for (_, state) in counts} <= {"healthy", "untested"}, counts


async def test_provider_outage_fails_fast_blames_no_key_and_recovers(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", OPENAI_KEYS)
    write_keys(tmp_path / "keys" / "gemini", GEMINI_KEYS)
    async with start_gateway(chaos_settings(tmp_path, fake)) as gw:
        guards = [p.guard for p in gw.gateway.providers.values()]
        load = Load(gw.url, clients=12)
        load.start()
        await eventually(lambda: len(load.ok()) >= 40, within=20)
        began = time.monotonic()
        calls_before = sum(fake.calls_by_key().values())
        fake.set_outage(503, seconds=OUTAGE_SEC)
        await eventually(lambda: all(g.state is BreakerState.OPEN for g in guards), within=5)
        await eventually(lambda: time.monotonic() >= began + OUTAGE_SEC, within=OUTAGE_SEC + 1)
        ended = time.monotonic()
        calls_during = sum(fake.calls_by_key().values()) - calls_before
        took = await eventually(
            lambda: all(g.state is BreakerState.CLOSED for g in guards),
            within=BREAKER_RECOVERY_SEC + 1,
        )
        closed = time.monotonic()
        await eventually(lambda: len(load.ok(since=closed)) >= 100, within=20)
        await load.stop()

        assert took <= BREAKER_RECOVERY_SEC
        assert load.errors(until=began) == []
        assert load.errors(since=closed + 0.5) == []
        during = load.errors(since=began, until=closed + 0.5)
        assert during, "the outage must be visible"
        assert {e.status for e in during} == {503}, {e.error for e in during}
        fast = [e for e in during if e.error and "circuit breaker" in e.error]
        assert fast, "while open, the breaker answers without calling upstream"
        # fail fast: the provider saw far fewer calls than clients made during the outage
        assert calls_during < len(load.errors(since=began, until=ended)), (calls_during,)
        await no_key_marked(gw)
        await eventually(lambda: set(leaks(gw.gateway, fake).values()) == {0}, within=5)


async def test_a_dying_proxy_costs_no_request_and_no_key(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    proxies = [ConnectProxy(), ConnectProxy(), ConnectProxy()]
    for proxy in proxies:
        await proxy.start()
    try:
        folder = tmp_path / "proxies"
        folder.mkdir()
        (folder / "list.txt").write_text("\n".join(p.url for p in proxies) + "\n")
        write_keys(tmp_path / "keys" / "openai", OPENAI_KEYS)
        write_keys(tmp_path / "keys" / "gemini", GEMINI_KEYS)
        proxy_config = {"mode": "stealth", "pool_list_path": str(folder)}
        settings = chaos_settings(tmp_path, fake, proxy_config=proxy_config)
        async with start_gateway(settings) as gw:
            guard = gw.gateway.providers["openai"].guard
            load = Load(gw.url, clients=12)
            load.start()
            # the proxy to kill carries openai keys (whose breakers are watched): the one most
            # of them are bound to (rendezvous over URLs with random ports may leave any one
            # proxy without an openai key), once it has tunnelled some of the load
            urls = [p.url for p in proxies]
            bound = Counter(egress_for(settings.providers["openai"], k, urls) for k in OPENAI_KEYS)
            dead = next(p for p in proxies if p.url == bound.most_common(1)[0][0])
            await eventually(lambda: len(load.ok()) >= 40 and dead.requests > 0, within=20)
            died = time.monotonic()
            await dead.stop()
            await eventually(
                lambda: guard.egress_states().get(dead.url) is BreakerState.OPEN, within=5
            )
            await eventually(lambda: len(load.ok(since=died)) >= 200, within=30)
            revived = time.monotonic()
            await dead.start()
            seen = dead.requests
            took = await eventually(
                lambda: (
                    guard.egress_states().get(dead.url) is BreakerState.CLOSED
                    and dead.requests > seen
                ),
                within=BREAKER_RECOVERY_SEC + 2,
            )
            await eventually(lambda: len(load.ok(since=revived + took)) >= 100, within=20)
            await load.stop()

            assert load.errors(until=died) == []
            # only streams mid-body through the proxy at the instant it died may break
            assert load.errors(since=died + 1.0) == []
            cut = load.errors(since=died, until=died + 1.0)
            assert all(e.status is None and "stream" in e.kind for e in cut), cut
            assert took <= BREAKER_RECOVERY_SEC + 1
            await no_key_marked(gw)
            await eventually(lambda: set(leaks(gw.gateway, fake).values()) == {0}, within=5)
    finally:
        for proxy in proxies:
            await proxy.stop()
