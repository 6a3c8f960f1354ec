"""A stealth proxy dies while the real Keeper and the real gateway run on one store: the Keeper's
own proxy schedule finds it dead within `worker.proxy_check_interval_sec` (its key round runs
only hourly here), the gateway hears of it (a store notice on PostgreSQL, where the gateway's
polling is set far apart; its refresh on SQLite) and its keys go through the other proxy, so
requests stop failing through the dead one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.run import Keeper
from llmgateway.store import Store, proxy_checks
from llmgateway.store.tables import proxies, proxy_status
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.connect_proxy import ConnectProxy
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, Running, eventually, start_gateway

KEYS = [f"sk-good-schedule-{i:03d}-abcdefgh" for i in range(12)]
CHECK_SEC = 1.0  # worker.proxy_check_interval_sec
RETRY_SEC = 0.5  # worker.proxy_retry_sec
WINDOW_SEC = 6.0  # requests are sent for this long after the proxy dies
SLACK_SEC = 2.0  # a check's own time, the gateway's refresh, a busy machine


@dataclass(frozen=True, slots=True)
class Sent:
    """One request after the proxy died: when (seconds after), its status, and how many of
    its upstream attempts failed."""

    at: float
    status: int
    failed: int


def settings_for(tmp_path: Path, fake: FakeUpstream, db_url: str, pool: Path) -> Settings:
    on_postgresql = db_url.startswith("postgresql")
    retry = {
        "enabled": True,
        "on_key_error": {"attempts": 5, "backoff_sec": 0.0},
        "on_server_error": {"attempts": 5, "backoff_sec": 0.0},
    }
    document = two_providers(
        tmp_path,
        fake,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        both={"gateway_policy": {"retry": retry}},
        openai={
            "shared_key_status": True,
            "proxy_config": {"mode": "stealth", "pool_list_path": str(pool)},
        },
        database={"url": db_url},
        # on PostgreSQL only the store notice can bring the news within the window
        gateway={"refresh_interval_sec": 60.0 if on_postgresql else 0.2},
        worker={
            "proxy_check_interval_sec": CHECK_SEC,
            "proxy_retry_sec": RETRY_SEC,
            "probe_interval_sec": 3600,  # the key round is not what checks proxies
            "watch_files": False,
        },
    )
    return Settings.model_validate(document)


@contextlib.asynccontextmanager
async def keeper_running(settings: Settings) -> AsyncIterator[Store]:
    """The Keeper's long run on its own store connection, until the block ends."""
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        stop = asyncio.Event()
        task = asyncio.create_task(Keeper(settings, store).run(stop))
        try:
            yield store
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


def failed_attempts(gw: Running) -> int:
    """Upstream attempts of the `openai` provider that did not end `ok`, so far."""
    metrics = gw.app.state.edge.attempt_loop.metrics
    metrics.flush()
    return int(
        sum(
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == "llmgateway_upstream_attempts_total"
            and sample.labels["provider"] == "openai"
            and sample.labels["reason"] != "ok"
        )
    )


async def proxy_rows(store: Store) -> dict[str, tuple[str, float | None]]:
    """Each proxy's (status, failing_since) by URL."""
    query = sa.select(proxies.c.url, proxy_status.c.status, proxy_status.c.failing_since).join(
        proxy_status, proxy_status.c.proxy_id == proxies.c.id
    )
    async with store.engine.connect() as conn:
        return {url: (status, since) for url, status, since in await conn.execute(query)}


async def test_a_dead_proxy_is_found_on_its_own_schedule_and_requests_stop_failing(
    db_url: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-schedule-0001-abcdefgh"])
    living, dying = ConnectProxy(), ConnectProxy()
    await living.start()
    await dying.start()
    pool = tmp_path / "proxies"
    pool.mkdir()
    (pool / "list.txt").write_text(f"{living.url}\n{dying.url}\n")
    settings = settings_for(tmp_path, fake, db_url, pool)
    try:
        async with (
            keeper_running(settings) as store,
            start_gateway(settings) as gw,
            aiohttp.ClientSession() as session,
        ):

            async def send() -> int:
                async with session.post(
                    f"{gw.url}/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                ) as response:
                    await response.read()
                    return response.status

            async def both_alive() -> bool:
                found = await proxy_rows(store)
                return len(found) == 2 and {s for s, _ in found.values()} == {KeyStatus.VALID}

            await eventually(both_alive, within=20)
            for _ in range(20):
                assert await send() == 200
            assert dying.requests > 0  # it carries keys
            assert failed_attempts(gw) == 0

            await dying.stop()
            died = time.time()
            sent: list[Sent] = []
            while time.time() < died + WINDOW_SEC:
                before = failed_attempts(gw)
                code = await send()
                sent.append(Sent(time.time() - died, code, failed_attempts(gw) - before))
                await asyncio.sleep(0.05)

            health, since = (await proxy_rows(store))[dying.url]
            failures = [s for s in sent if s.failed]
            last_failure = max((s.at for s in failures), default=0.0)
            found = (
                "not marked dead" if since is None else f"marked dead {since - died:.2f} s after"
            )
            print(
                f"\nproxy died: {sum(s.failed for s in sent)} failed attempts in "
                f"{len(failures)} of {len(sent)} requests over {WINDOW_SEC:.0f} s; {found}, "
                f"last failed attempt {last_failure:.2f} s after"
            )
            assert health == proxy_checks.DEAD_PROXY
            assert since is not None
            found_after = since - died
            assert found_after <= CHECK_SEC + SLACK_SEC
            assert last_failure <= CHECK_SEC + SLACK_SEC
            assert {s.status for s in sent} == {200}  # retried on keys behind the live proxy

            dead_then = failed_attempts(gw)
            through_living = living.requests
            for _ in range(20):
                assert await send() == 200
            assert failed_attempts(gw) == dead_then  # its keys go through the live proxy now
            assert living.requests > through_living
    finally:
        await living.stop()
        await dying.stop()
