"""The Keeper's first checks at scale against the fake upstream over real HTTP, on SQLite and
PostgreSQL: untested keys at the adaptive rate with their results written in batches, a
Retry-After honoured (the pace's time is virtual: `ticker` and `sleep` injected),
`task_timeout_sec` bounding a provider's whole round, and a quiet idle Keeper."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.helpers import ManualClock, eventually

from llmgateway.config.settings import Settings, Timeouts
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.keeper.run import Keeper
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store
from llmgateway.store import probes as queries
from llmgateway.store.tables import key_status, keys
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream, Upstream, UpstreamResponse


def config(
    tmp_path: Path,
    fake: FakeUpstream,
    policy: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.openai_base,
        "default_model": "gpt-4o-mini",
        "shared_key_status": True,
        "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
        "timeouts": {"connect": 2, "read": 30, "pool": 2},
        "worker_health_policy": policy or {},
    }
    return Settings.model_validate({"worker": worker or {}, "providers": {"p1": provider}})


@dataclass(slots=True)
class PaceTime:
    """The first checks' time, virtual: `sleep` moves it on at once."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass(slots=True)
class Recording:
    """The real HTTP upstream, noting the pace's time and the URL of every call it sends."""

    inner: Upstream
    pace: PaceTime
    sent: list[tuple[float, str, str]] = field(default_factory=list)

    async def request(
        self,
        egress: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        secret = headers.get("authorization", "").removeprefix("Bearer ")
        self.sent.append((self.pace.now, url, secret))
        return await self.inner.request(egress, method, url, headers, body, timeouts, deadline)

    def open_connections(self) -> int:
        return self.inner.open_connections()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sessions = HttpUpstream()
    yield sessions
    await sessions.close()


async def test_untested_keys_are_checked_at_once_and_written_in_batches(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    secrets = [f"sk-many-{i:05d}-abcdefghijkl" for i in range(1200)]
    write_keys(tmp_path / "keys", secrets)
    fast = {"start_rate": 5000, "max_rate": 5000}
    settings = config(tmp_path, fake, {"first_check": fast})  # batch_delay_sec stays 15
    await run_sync(settings, store)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    summary = await Keeper(settings, store, upstream, clock=clock, sleep=sleep).probe_round()
    assert (summary.due, summary.healthy) == (1200, 1200)
    assert 15 not in slept  # untested keys do not wait batch_delay_sec
    # claims of 1000: 500 + 500 in the first, 200 in the second; not one write per 30 keys
    assert summary.writes == 3
    assert await queries.count_due(store, clock.now) == 0


async def test_a_retry_after_pauses_the_providers_first_checks(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    limited = "sk-0-ratelimited-first-abcdef"  # sorts first: checked before the others
    good = [f"sk-good-after-{i:02d}-abcdefgh" for i in range(5)]
    fake.set_behavior(limited, Behavior(rate_limited=True, retry_after=30.0))
    write_keys(tmp_path / "keys", [limited, *good])
    one_at_a_time = {"concurrency": 1, "start_rate": 1000, "max_rate": 1000}
    settings = config(tmp_path, fake, {"first_check": one_at_a_time})
    await run_sync(settings, store)
    pace = PaceTime()
    started = pace.now
    recording = Recording(upstream, pace)
    keeper = Keeper(settings, store, recording, clock=clock, sleep=pace.sleep, ticker=pace)

    summary = await keeper.probe_round()

    assert (summary.healthy, summary.verifying) == (5, 1)
    first_at, first_url, first_secret = recording.sent[0]
    assert (first_at, first_secret) == (started, limited)
    assert first_url.endswith("/v1/models")
    # no second call into the 429 for that key, and nothing at all before Retry-After passed
    assert [secret for _, _, secret in recording.sent].count(limited) == 1
    assert len(recording.sent) == 11  # the 5 others: the models list, then a generation probe
    assert all(at >= started + 30.0 for at, _, _ in recording.sent[1:])
    assert sum(pace.slept) >= 30.0
    async with store.engine.connect() as conn:
        status, attempts, due_at = (
            await conn.execute(
                sa.select(
                    key_status.c.status, key_status.c.probe_attempts, key_status.c.next_check_at
                )
                .select_from(key_status.join(keys, keys.c.id == key_status.c.key_id))
                .where(keys.c.value == limited, key_status.c.model == ALL_MODELS)
            )
        ).one()
    assert (status, attempts, due_at) == (KeyStatus.UNTESTED, 1, clock.now + 65)


async def test_task_timeout_bounds_the_providers_whole_round_not_each_claim(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [f"sk-hang-{i:02d}-abcdefghijkl" for i in range(6)])
    settings = config(tmp_path, fake, {"task_timeout_sec": 1})
    await run_sync(settings, store)
    keeper = Keeper(settings, store, upstream, clock=clock, claim_size=2)

    summary = await keeper.probe_round()

    # one cut for the provider, and no further claims of its rows (each claim of 2 used to get
    # a task_timeout_sec of its own: a round of 100,000 keys in claims of 1,000 never ended)
    assert (summary.timed_out, summary.probed) == (1, 0)
    assert await queries.count_due(store, clock.now) == 6  # released: all still due


async def test_an_idle_keeper_logs_its_empty_rounds_at_debug(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "keys").mkdir()
    worker = {"probe_interval_sec": 0.02, "watch_files": False}
    settings = config(tmp_path, fake, worker=worker)
    caplog.set_level(logging.DEBUG, logger="llmgateway.keeper")
    stop = asyncio.Event()
    rounds: list[object] = []
    keeper = Keeper(settings, store, upstream, clock=clock)
    running = asyncio.create_task(keeper.run(stop, on_round=rounds.append))
    await eventually(lambda: len(rounds) >= 5, 10.0, what="five idle probe rounds")
    stop.set()
    await running
    keeper_records = [r for r in caplog.records if r.name == "llmgateway.keeper"]
    infos = [r.getMessage() for r in keeper_records if r.levelno >= logging.INFO]
    debugs = [r.getMessage() for r in keeper_records if r.levelno == logging.DEBUG]
    assert not [line for line in infos if line.startswith("probe round")]
    assert [line for line in infos if line.startswith("keeper idle")] == [
        "keeper idle: nothing due in 1 probe round(s)"
    ]
    assert len([line for line in debugs if line.startswith("probe round: 0 due")]) >= 4
