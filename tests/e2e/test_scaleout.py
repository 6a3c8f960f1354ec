"""Several gateway processes and keepers on one real PostgreSQL: notices, kills and restarts,
reached directly, through a real PgBouncer in transaction mode with `database.direct_url` for
the notices, and through it alone (the gateways then poll the store).

Every part is a real process (`llmgateway gateway`, `llmgateway worker`) started the way an
operator starts it; only the LLM provider is the in-process fake upstream, which counts calls
and concurrent requests per key.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import yaml

from llmgateway.core.outcomes import KeyStatus
from llmgateway.store import Store
from llmgateway.store.tables import key_status, keys
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import METRICS_TOKEN, eventually, free_port, wait_ready
from tests.pgbouncer import Route, routes

TOKEN = "gw-scaleout-token-0001"
KEYS = [f"sk-good-scale-{i:012d}" for i in range(6)]
START_TIMEOUT = 30.0

pytestmark = pytest.mark.postgres


def write_config(
    folder: Path, database: dict[str, Any], fake: FakeUpstream, refresh: float, **worker: Any
) -> Path:
    config = {
        "database": {**database, "pool_size": 3},
        "logging": {"level": "WARNING"},
        "gateway": {"refresh_interval_sec": refresh},
        "metrics": {"access_token": METRICS_TOKEN},
        "worker": {
            "probe_interval_sec": 0.2,
            "sync_interval_sec": 0.5,
            "watch_files": False,
            "metrics_port": 0,
            **worker,
        },
        "providers": {
            "openai": {
                "provider_type": "openai_like",
                "keys_path": str(folder / "keys"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": TOKEN},
                "worker_health_policy": {
                    "batch_size": 2,
                    "batch_delay_sec": 0,
                    "task_timeout_sec": 30,
                },
                "gateway_policy": {
                    "retry": {"on_key_error": {"attempts": 5, "backoff_sec": 0}},
                },
            }
        },
    }
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Fleet:
    """The processes of one test; each is SIGKILLed at the end if still running."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        log = self.config.with_name(f"{args[0]}-{len(self.processes)}.log")
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "llmgateway",
                *args,
                "--config",
                str(self.config),
                stdout=output,
                stderr=output,
            )
        self.processes.append(process)
        return process

    async def gateway(self, port: int) -> asyncio.subprocess.Process:
        process = await self.spawn("gateway", "--port", str(port))
        await wait_ready(f"http://127.0.0.1:{port}", process, within=START_TIMEOUT)
        return process

    async def worker(self) -> asyncio.subprocess.Process:
        return await self.spawn("worker")

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def chat(session: aiohttp.ClientSession, port: int) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {TOKEN}"}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with session.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def statuses(store: Store) -> dict[str, str]:
    query = sa.select(keys.c.value, key_status.c.status).select_from(
        key_status.join(keys, keys.c.id == key_status.c.key_id)
    )
    async with store.engine.connect() as conn:
        return {str(value): str(status) for value, status in await conn.execute(query)}


WRITE_BEHIND_SEC = 0.5
"""How long a gateway's finding may wait in its write-behind queue (`StatusWriter`)."""
POLL_SEC = 1.0
"""The refresh interval of the gateways that poll (through the pooler without direct_url)."""


@pytest.mark.parametrize("route", routes(), indirect=True)
async def test_two_gateways_two_keepers_share_one_postgresql(
    pg_database: str, route: Route, tmp_path: Path
) -> None:
    polling = route.name == "pgbouncer"
    # with notices, an interval far beyond the test: only a notice can explain a quick update
    refresh = POLL_SEC if polling else 600.0
    # a finding reaches the other gateway within 1 s by notice, within the write-behind and
    # one refresh interval by polling
    settle = WRITE_BEHIND_SEC + POLL_SEC + 0.3 if polling else 1.0
    async with FakeUpstream() as fake:
        write_keys(tmp_path / "keys", KEYS)
        fleet = Fleet(write_config(tmp_path, route.database(pg_database), fake, refresh))
        store = await Store.open(pg_database)
        try:
            await run_scenario(fleet, fake, store, tmp_path, settle, polling)
        except BaseException:
            for log in sorted(tmp_path.glob("*.log")):  # shown by pytest when the test fails
                print(f"--- {log.name}\n{log.read_text()}")
            raise
        finally:
            await fleet.close()
            await store.close()


async def run_scenario(
    fleet: Fleet, fake: FakeUpstream, store: Store, folder: Path, settle: float, polling: bool
) -> None:
    port_a, port_b = free_port(), free_port()
    # all four start together: migrations and the start-up sync run concurrently
    a, _, *keepers = await asyncio.gather(
        fleet.gateway(port_a), fleet.gateway(port_b), fleet.worker(), fleet.worker()
    )
    expected = "polling" if polling else "notices"  # (the listener starts after /readyz)
    for port in (port_a, port_b):
        await eventually(partial(_is, port, expected), what=f"{expected} on {port}")

    async def all_valid(wanted: Iterable[str]) -> bool:
        found = await statuses(store)
        return all(found.get(k) == KeyStatus.VALID for k in wanted)

    await eventually(
        lambda: all_valid(KEYS), START_TIMEOUT, step=0.05, what="the keepers' first probe round"
    )
    # two keepers, one round: each key probed exactly once (auth probe + generation probe)
    assert {fake.calls(k) for k in KEYS} == {2}
    assert max(fake.peak_open(k) for k in KEYS) == 1

    # -- gateway A finds key K invalid; gateway B must skip K within 1 s ------------------------
    bad = KEYS[0]
    fake.set_behavior(bad, Behavior(invalid=True))
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert await chat(session, port_a) == 200  # the retry hides the bad key
            if fake.calls(bad) > 2:
                break
        assert fake.calls(bad) == 3, "gateway A never picked the bad key"
        marked_at = time.monotonic()
        hits = fake.calls(bad)
        # the claim under test is "within 1 s" (notices) or "within the write-behind and one
        # refresh interval" (polling): wait exactly that long, then B must know
        await asyncio.sleep(max(0.0, marked_at + settle - time.monotonic()))
        results = [await chat(session, port_b) for _ in range(60)]
        assert results == [200] * 60
        assert fake.calls(bad) == hits, "gateway B still sent traffic to the invalid key"
        assert (await statuses(store))[bad] == KeyStatus.INVALID_KEY

        # -- SIGKILL gateway A and restart it: the finding survives in the store ----------------
        a.kill()
        await a.wait()
        a = await fleet.gateway(port_a)
        results = [await chat(session, port_a) for _ in range(60)]
        assert results == [200] * 60
        assert fake.calls(bad) == hits

    # -- keepers killed mid-round: no key probed twice at once, nothing lost --------------------
    fresh = [f"sk-good-fresh-{i:012d}" for i in range(8)]
    for secret in fresh:
        fake.set_behavior(secret, Behavior(delay=0.4))  # rounds long enough to kill one mid-way
    write_keys(folder / "keys", KEYS + fresh)

    async def probing() -> bool:
        return sum(fake.calls(k) for k in fresh) >= 2

    await eventually(
        probing, START_TIMEOUT, step=0.05, what="the keepers to start probing the new keys"
    )
    for keeper in keepers:  # both keepers die with probes in flight and leases held
        assert keeper.returncode is None, "a keeper stopped on its own"
        keeper.kill()
        await keeper.wait()
    dead = await lease_owners(store)
    assert dead, "the killed keepers held no leases"
    await fleet.worker()
    await fleet.worker()
    # rows leased by the dead keepers wait for their lease to end (task_timeout_sec + 60 s);
    # ending the leases in the store stands for that wait
    await expire_leases(store, dead)
    await eventually(
        lambda: all_valid(fresh),
        START_TIMEOUT,
        step=0.05,
        what="the restarted keepers to finish the new keys",
    )
    assert max(fake.peak_open(k) for k in fresh) == 1
    # gateways never lost a key: the invalid one is still out, everything else serves
    async with aiohttp.ClientSession() as session:
        for port in (port_a, port_b):
            results = [await chat(session, port) for _ in range(30)]
            assert results == [200] * 30
    assert fake.calls(bad) == hits


async def store_updates(port: int) -> str:
    """What the gateway on `port` says of how it follows the store (`/readyz`)."""
    url = f"http://127.0.0.1:{port}/readyz"
    headers = {"authorization": f"Bearer {METRICS_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        updates: str = (await response.json())["store_updates"]
    return updates


async def _is(port: int, expected: str) -> bool:
    return await store_updates(port) == expected


async def lease_owners(store: Store) -> set[str]:
    query = sa.select(key_status.c.lease_owner).where(key_status.c.lease_owner.is_not(None))
    async with store.engine.connect() as conn:
        return {str(owner) for owner in (await conn.execute(query)).scalars()}


async def expire_leases(store: Store, owners: set[str]) -> None:
    """What the passing of the lease time does to a killed keeper's row and key leases."""
    async with store.engine.begin() as conn:
        for table in (key_status, keys):
            await conn.execute(
                sa.update(table)
                .where(table.c.lease_owner.in_(owners))
                .values(lease_until=time.time() - 1)
            )
