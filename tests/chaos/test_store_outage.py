"""Chaos: PostgreSQL unreachable for 10 s under SDK load (the gateway reaches it through a TCP
relay the test cuts and restores).

What must hold: clients see no error at all (the request path never touches the store); keys
that turn invalid during the outage are taken out of rotation at once and their status changes
wait in the write-behind queue; once the store is back every queued change is written exactly
once (the writer's count grows by exactly the number of changes, the store shows each one), and
`/readyz` reports the store reachable again within a few refresh intervals. No healthy key is
marked bad by the outage.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy.engine import make_url

from llmgateway.core.outcomes import KeyStatus
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from llmgateway.testing.tcp_relay import TcpRelay
from tests.chaos.load import Load, leaks
from tests.helpers import chaos_settings, eventually, start_gateway

GOOD = [f"sk-store-good-{i:08d}" for i in range(10)]
VICTIMS = [f"sk-store-victim-{i:08d}" for i in range(4)]  # turn invalid while the store is down
GEMINI = [f"AIza-store-good-{i:08d}" for i in range(5)]
STORE_OUTAGE_SEC = 10.0
pytestmark = pytest.mark.postgres


async def test_store_outage_loses_no_event_and_no_request(
    tmp_path: Path, fake: FakeUpstream, pg_database: str
) -> None:
    real = make_url(pg_database)
    assert real.host is not None
    async with TcpRelay(real.host, real.port or 5432) as relay:
        via_relay = real.set(host="127.0.0.1", port=relay.port)
        write_keys(tmp_path / "keys" / "openai", GOOD + VICTIMS)
        write_keys(tmp_path / "keys" / "gemini", GEMINI)
        settings = chaos_settings(
            tmp_path, fake, database_url=via_relay.render_as_string(hide_password=False)
        )
        async with start_gateway(settings) as gw:
            gateway = gw.gateway
            writer = gateway.writer
            assert writer is not None
            pool = gateway.providers["openai"].pool
            load = Load(gw.url, clients=10)
            load.start()
            # warm up until every key has served once (its first success is written as valid)
            await eventually(lambda: "untested" not in {s for (_, s) in pool.counts(0)}, 20)
            await eventually(lambda: writer.pending == 0, within=5)
            assert gateway.store is not None
            revision = await gateway.store.revision()  # and the pool has read all of it back
            await eventually(lambda: gateway.readiness.revision >= revision, within=5)
            written_before = writer.written

            cut = time.monotonic()
            await relay.cut()
            for secret in VICTIMS:
                fake.set_behavior(secret, Behavior(invalid=True))
            await eventually(lambda: pool.counts(0).get(("__ALL_MODELS__", "invalid")) == 4, 10)
            assert writer.pending == len(VICTIMS)  # queued, not lost, not yet written
            await eventually(lambda: not gateway.readiness.store_ok, within=5)
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{gw.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["problem"].startswith("store unreachable")
            await eventually(lambda: time.monotonic() >= cut + STORE_OUTAGE_SEC, within=11)
            assert writer.pending == len(VICTIMS)
            served_while_down = len(load.ok(since=cut))
            await relay.restore()
            restored = time.monotonic()

            await eventually(lambda: gateway.readiness.store_ok, within=3)
            await eventually(lambda: writer.pending == 0, within=12)  # its backoff is ≤ 10 s
            await eventually(lambda: len(load.ok(since=restored)) >= 50, within=20)
            await load.stop()

            assert served_while_down >= 50
            assert load.errors() == []
            assert writer.written - written_before == len(VICTIMS)  # each once, none doubled
            assert gw.cooldowns() == {("openai", "invalid_key"): float(len(VICTIMS))}
            await eventually(lambda: set(leaks(gateway, fake).values()) == {0}, within=5)

    async with await Store.open(real) as store:
        snapshot = await store.snapshot()
    status = {row.secret: row.status for row in snapshot.keys}
    assert {status[s] for s in VICTIMS} == {KeyStatus.INVALID_KEY}
    assert {status[s] for s in GOOD + GEMINI} == {KeyStatus.VALID}
