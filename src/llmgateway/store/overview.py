"""What the console's overview shows, read from the store in a few short queries.

The two reads that scan the whole pool, the state counts (`status.status_counts`, ~160 ms on
SQLite at 100,000 keys) and the probe backlog, are kept by `PoolCounts`, refreshed in the
background once they are `max_age` old: a page view never waits for them (but the first). The
rest is read at each view and bounded at 100,000 keys: the rates and chart read `usage_hours`
(24 rows per provider), and the attention list walks only the failing hours of the last day
(`ix_key_usage_failing`) before reading 20 keys by id. Keys come
out masked and by fingerprint; the secret never leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import KeyStatus
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import USAGE_HOUR, StatusCount
from llmgateway.store import Store, breakers, keeper_tasks, status
from llmgateway.store.breakers import BreakerRow
from llmgateway.store.tables import keeper_tasks as keeper_tasks_table
from llmgateway.store.tables import (
    key_status,
    key_usage,
    keys,
    providers,
    proxies,
    proxy_status,
    usage_hours,
)

log = logging.getLogger("llmgateway.console")

DAY_HOURS = 24
ATTENTION = 20
"""Keys in the attention list."""


@dataclass(frozen=True, slots=True)
class ProxyCount:
    """A provider's active proxies: alive (the last check passed), dead, not checked yet."""

    provider: str
    alive: int
    dead: int
    untested: int


@dataclass(frozen=True, slots=True)
class Attention:
    """A key among those with the most failures in the last 24 h: masked, by fingerprint."""

    key_id: int
    provider: str
    masked: str
    fingerprint: str
    failures: int
    requests: int
    last_used_at: float | None
    disabled: bool


@dataclass(frozen=True, slots=True)
class HourUsage:
    """Requests and failures of every gateway in the hour starting at `hour`."""

    hour: int
    requests: int
    failures: int


@dataclass(frozen=True, slots=True)
class Tally:
    """The whole pool's counts read at `at`: (key, model) rows per provider, model and state,
    and the rows due for a probe."""

    states: list[StatusCount]
    backlog: int
    at: float


@dataclass(slots=True)
class PoolCounts:
    """The latest `Tally`, read again in the background once it is `max_age` seconds old
    (stale while it is read: a view never waits, but the very first)."""

    store: Store
    clock: Callable[[], float]
    max_age: float = 5.0
    _last: Tally | None = None
    _reading: asyncio.Task[Tally] | None = field(default=None, repr=False)

    async def get(self) -> Tally:
        """The counts, at most `max_age` old unless a read is under way."""
        last = self._last
        if last is not None and self.clock() - last.at < self.max_age:
            return last
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read(), name="overview-counts")
            self._reading.add_done_callback(_said)
        if last is None:
            return await asyncio.shield(self._reading)
        return last

    async def _read(self) -> Tally:
        now = self.clock()
        async with self.store.engine.connect() as conn:
            tally = Tally(await status.status_counts(conn), await backlog(conn, now), now)
        self._last = tally
        return tally


def _said(task: asyncio.Task[Tally]) -> None:
    """A background read that failed is logged (the next view tries again)."""
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            log.warning("overview: reading the pool's counts failed: %s", error)


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview at `now`; `counted_at` is when `states` and `backlog` were read.
    `hours`: the last 24 hours, oldest first, the current one last (zero where nothing was
    counted); `counted` is False when no gateway counted anything in them (no usage data yet:
    the page shows no rates)."""

    now: float
    counted_at: float
    states: list[StatusCount]
    breakers: list[BreakerRow]
    proxies: list[ProxyCount]
    last_sync_at: float | None
    backlog: int
    attention: list[Attention]
    hours: list[HourUsage]

    @property
    def counted(self) -> bool:
        return any(h.requests for h in self.hours)

    def rate(self, hours: int) -> tuple[float, float, float]:
        """(requests per minute, failures per minute, since when) over the current hour and the
        `hours - 1` before it: the counts are hourly, so the window starts on the hour."""
        window = self.hours[-hours:]
        since = float(window[0].hour)
        minutes = max((self.now - since) / 60, 1.0)
        requests = sum(h.requests for h in window)
        failures = sum(h.failures for h in window)
        return requests / minutes, failures / minutes, since


async def read(store: Store, now: float, pool: PoolCounts | None = None) -> Overview:
    """The overview as the store has it at `now`, the pool-wide counts from `pool` (None: read
    now)."""
    tally = await (pool or PoolCounts(store, lambda: now)).get()
    async with store.engine.connect() as conn:
        return Overview(
            now=now,
            counted_at=tally.at,
            states=tally.states,
            breakers=await breakers.read(conn),
            proxies=await proxy_counts(conn),
            last_sync_at=await last_sync(conn),
            backlog=tally.backlog,
            attention=await attention(conn, now),
            hours=await hourly(conn, now),
        )


async def proxy_counts(conn: AsyncConnection) -> list[ProxyCount]:
    """Active proxies of active providers, per provider, by their last check."""
    alive = proxy_status.c.status == KeyStatus.VALID.value
    untested = proxy_status.c.status == KeyStatus.UNTESTED.value
    query = (
        sa.select(
            providers.c.name,
            sa.func.sum(sa.case((alive, 1), else_=0)),
            sa.func.sum(sa.case((untested, 1), else_=0)),
            sa.func.count(),
        )
        .select_from(
            proxies.join(proxy_status, proxy_status.c.proxy_id == proxies.c.id).join(
                providers, providers.c.id == proxies.c.provider_id
            )
        )
        .where(proxies.c.active, providers.c.active)
        .group_by(providers.c.name)
        .order_by(providers.c.name)
    )
    return [
        ProxyCount(name, int(up), int(total) - int(up) - int(new), int(new))
        for name, up, new, total in await conn.execute(query)
    ]


async def last_sync(conn: AsyncConnection) -> float | None:
    """When a Keeper last finished a sync of the key files (None: never, or before it kept
    the record)."""
    row = keeper_tasks_table.c
    query = sa.select(row.last_run_at).where(row.name == keeper_tasks.SYNC)
    found = await conn.scalar(query)
    return None if found is None else float(found)


async def backlog(conn: AsyncConnection, now: float) -> int:
    """Status rows the Keeper should have probed by `now` and has not yet: active rows of
    enabled, active keys of active providers whose next check is due."""
    query = (
        sa.select(sa.func.count())
        .select_from(
            key_status.join(keys, keys.c.id == key_status.c.key_id).join(
                providers, providers.c.id == keys.c.provider_id
            )
        )
        .where(
            key_status.c.next_check_at <= now,
            key_status.c.active,
            keys.c.active,
            keys.c.disabled_at.is_(None),
            providers.c.active,
        )
    )
    return int(await conn.scalar(query) or 0)


async def attention(conn: AsyncConnection, now: float, limit: int = ATTENTION) -> list[Attention]:
    """The keys with the most failures in the last 24 hours (the current hour and the 23
    before), most first (ties: the lower key id), with their requests in the same hours."""
    since = _hour(now) - (DAY_HOURS - 1) * USAGE_HOUR
    failures = sa.func.sum(key_usage.c.failures).label("failures")
    # `key_id + 0`: not the primary key's column, or SQLite (without ANALYZE statistics) walks
    # the primary key for the GROUP BY, every row of the retention (~200 ms at 240,000 rows),
    # instead of the failing rows of the day through the partial index (~7 ms); the literal 0
    # (not a parameter) lets the planners match that index's `failures > 0`
    zero = sa.literal_column("0", sa.Integer)
    some_key = (key_usage.c.key_id + zero).label("key_id")
    top = (
        sa.select(some_key, failures)
        .where(key_usage.c.failures > zero, key_usage.c.hour >= since)
        .group_by(some_key)
        .order_by(failures.desc(), some_key)
        .limit(limit)
    )
    ranked = [(int(key_id), int(count)) for key_id, count in await conn.execute(top)]
    if not ranked:
        return []
    ids = [key_id for key_id, _ in ranked]
    requests = {
        int(key_id): int(total)
        for key_id, total in await conn.execute(
            sa.select(key_usage.c.key_id, sa.func.sum(key_usage.c.requests))
            .where(key_usage.c.key_id.in_(ids), key_usage.c.hour >= since)
            .group_by(key_usage.c.key_id)
        )
    }
    described = {
        int(row.id): row
        for row in await conn.execute(
            sa.select(
                keys.c.id, keys.c.value, providers.c.name, keys.c.last_used_at, keys.c.disabled_at
            )
            .select_from(keys.join(providers, providers.c.id == keys.c.provider_id))
            .where(keys.c.id.in_(ids))
        )
    }
    found = []
    for key_id, count in ranked:
        row = described.get(key_id)
        if row is None:  # purged meanwhile
            continue
        found.append(
            Attention(
                key_id=key_id,
                provider=row.name,
                masked=mask(row.value),
                fingerprint=fingerprint(row.value),
                failures=count,
                requests=requests.get(key_id, count),
                last_used_at=row.last_used_at,
                disabled=row.disabled_at is not None,
            )
        )
    return found


async def hourly(conn: AsyncConnection, now: float) -> list[HourUsage]:
    """Every gateway's requests and failures per hour over the last 24 hours, oldest first,
    zero-filled."""
    first = _hour(now) - (DAY_HOURS - 1) * USAGE_HOUR
    query = (
        sa.select(
            usage_hours.c.hour,
            sa.func.sum(usage_hours.c.requests),
            sa.func.sum(usage_hours.c.failures),
        )
        .where(usage_hours.c.hour >= first)
        .group_by(usage_hours.c.hour)
    )
    counted = {int(h): (int(r), int(f)) for h, r, f in await conn.execute(query)}
    hours = [first + i * USAGE_HOUR for i in range(DAY_HOURS)]
    return [HourUsage(h, *counted.get(h, (0, 0))) for h in hours]


def _hour(moment: float) -> int:
    return int(moment // USAGE_HOUR) * USAGE_HOUR
