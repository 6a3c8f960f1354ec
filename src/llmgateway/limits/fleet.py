"""The `postgres` backend: each gateway counts locally against its share of every limit.

Gateways sharing one PostgreSQL database count each other, and each counts exactly in memory
against its share: no database round trip per request. With N live gateways, the one of rank r
gets `share_of(limit, r, N)` of each limit (the shares add up to the limit). The fleet is
counted every `gateway.refresh_interval_sec`, on one connection of the gateway's own, in one of
two ways, chosen by what that connection goes through (`store.pooler`):

- *Advisory locks* (PostgreSQL itself or a session pooler: `database.direct_url` when set, else
  `database.url`): each gateway holds one session-level advisory lock `(namespace, n)` and reads
  the granted locks of its namespace from `pg_locks`. A gateway that dies loses its connection,
  hence its lock, and the others take over its share at their next refresh.
- *Lease rows* (a transaction pooler without `direct_url`, where a session lock would not
  last): each gateway renews its row in `limit_members` until `stale_after` seconds from the
  database's clock, in one transaction per refresh, and counts the rows not expired. One that
  stops cleanly deletes its row; one that dies leaves it to expire, and meanwhile the others
  keep their smaller shares (the limits are under-used, never exceeded).

The guarantee, stated: with a stable fleet the limits are never exceeded, and they are
under-used when load is uneven (a gateway cannot lend an idle share; at worst each key serves
`limit - share` fewer than it could). For one refresh interval after a gateway joins or leaves,
shares are in flux and the sum may briefly exceed a limit by the newcomer's share. Redis is
exact; prefer it when you can. When the membership cannot be read for `lease_ttl_sec` (or three
refresh intervals, if longer), the limits fail open until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from llmgateway.config.settings import KeyLimits, Pooler
from llmgateway.limits.counts import LocalCounts, Refusal, share_of
from llmgateway.limits.outage import Outage, Unreachable
from llmgateway.store import pooler

log = logging.getLogger("llmgateway.limits")

Slot = tuple[str, int, str]
_CONNECT_TIMEOUT_SEC = 5.0
_MAX_MEMBERS = 4096
_ERRORS = (
    OSError,
    TimeoutError,
    ValueError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    Unreachable,
)
_MEMBERS = """
SELECT objid::int8 FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::int8::oid
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# the database's clock (epoch seconds): one clock for every gateway, whatever their own say
_RENEW = """
INSERT INTO limit_members (namespace, member, seen_until)
VALUES ($1, $2, extract(epoch FROM clock_timestamp())::float8 + $3)
ON CONFLICT (namespace, member) DO UPDATE SET seen_until = EXCLUDED.seen_until
"""
_EXPIRE = """
DELETE FROM limit_members
WHERE namespace = $1 AND seen_until < extract(epoch FROM clock_timestamp())::float8
"""
_LEASED = "SELECT member FROM limit_members WHERE namespace = $1 ORDER BY member"
_LEAVE = "DELETE FROM limit_members WHERE namespace = $1 AND member = $2"


def namespace_of(prefix: str) -> int:
    """The advisory-lock namespace (a non-negative int4) of `limits.key_prefix`."""
    return zlib.crc32(prefix.encode()) & 0x7FFFFFFF


@dataclass(slots=True)
class PostgresBackend:
    """This gateway's place in the fleet (rank, size) and its exact local counts. `url` is
    `database.url`, `direct_url` `database.direct_url` (SQLAlchemy URLs, any driver)."""

    url: str = field(repr=False)
    namespace: int
    interval: float
    stale_after: float
    outage: Outage
    clock: Callable[[], float]
    direct_url: str | None = field(default=None, repr=False)
    pooler: Pooler = Pooler.AUTO
    name: str = "postgres"
    counts: LocalCounts = field(default_factory=LocalCounts)
    leases: bool | None = None  # None: not connected yet; then lease rows or advisory locks
    member: int | None = None  # the advisory lock held
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    )  # the lease row's member
    rank: int = 0
    size: int = 1
    seen_at: float | None = None
    _connection: asyncpg.Connection | None = None

    async def take(
        self, slot: Slot, token: int, limits: KeyLimits, now: float, amount: int = 0
    ) -> Refusal | None:
        """Count one request on `slot` (reserving `amount` tokens when `limits.tpm` is set)
        against this gateway's share of each limit."""
        self._counted_lately(now)
        most = self._share(limits.max_concurrent)
        rpm = self._share(limits.rpm)
        tpm = self._share(limits.tpm)
        return self.counts.take(slot, (slot[0], token), most, rpm, now, tpm, amount)

    async def reserve(
        self, slot: Slot, token: int, tpm: int, amount: int, now: float
    ) -> Refusal | None:
        """Reserve `amount` tokens on `slot` against this gateway's share of `tpm`."""
        self._counted_lately(now)
        share = share_of(tpm, self.rank, self.size)
        return self.counts.reserve(slot, (slot[0], token), share, amount, now)

    def _counted_lately(self, now: float) -> None:
        """Unreachable unless the fleet was counted within `stale_after` (the shares would be
        stale: the limits then fail open, as an unreachable backend's do)."""
        if self.seen_at is None or now - self.seen_at > self.stale_after:
            raise Unreachable("the gateway fleet could not be counted lately")

    def _share(self, limit: int | None) -> int | None:
        return None if limit is None else share_of(limit, self.rank, self.size)

    def give_back(self, provider: str, token: int) -> None:
        """The request held as `token` ended."""
        self.counts.give_back((provider, token))

    def spent(self, slot: Slot, token: int, amount: int | None) -> None:
        """The request that reserved tokens on `slot` as `token` used `amount` (None: the
        reservation stands)."""
        self.counts.spent((slot[0], token), amount)

    async def refresh(self) -> None:
        """Join the fleet if not in it (again), then count its live members."""
        connection = self._connection
        if connection is None or connection.is_closed():
            self.member = None
            connection = self._connection = await self._connect()
        if self.leases:
            self.rank, self.size = await self._count_leases(connection)
        else:
            if self.member is None:
                self.member = await _join(connection, self.namespace)
            rows = await connection.fetch(_MEMBERS, self.namespace)
            members = sorted(int(row[0]) for row in rows)
            self.rank, self.size = members.index(self.member), len(members)
        self.seen_at = self.clock()

    async def _connect(self) -> asyncpg.Connection:
        url, check = pooler.session_place(self.url, self.direct_url, self.pooler)
        connection, mode = await pooler.connect(
            url,
            check,
            connect_timeout=_CONNECT_TIMEOUT_SEC,
            server_settings={"application_name": "llmgateway-limits"},
        )
        leases = not mode.keeps_sessions
        if leases != self.leases:
            way = "lease rows (through a transaction pooler)" if leases else "advisory locks"
            log.info("per-key limits: the gateway fleet is counted by %s", way)
        self.leases = leases
        return connection

    async def _count_leases(self, connection: asyncpg.Connection) -> tuple[int, int]:
        """Renew this gateway's row, drop expired ones, and rank the rest: one transaction."""
        async with connection.transaction():
            await connection.execute(_RENEW, self.namespace, self.owner, self.stale_after)
            await connection.execute(_EXPIRE, self.namespace)
            rows = await connection.fetch(_LEASED, self.namespace)
        members = [str(row[0]) for row in rows]
        return members.index(self.owner), len(members)  # renewed just now: among them

    async def start(self) -> None:
        """Join the fleet before serving (on failure, `run()` keeps trying)."""
        try:
            await self.refresh()
        except _ERRORS:
            await self._drop()

    async def run(self) -> None:
        """Refresh the membership every `interval` seconds, for ever."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except _ERRORS:
                await self._drop()  # reconnect and rejoin at the next refresh

    async def close(self) -> None:
        """Leave the fleet (closing the connection releases the lock; a lease row is
        deleted)."""
        connection = self._connection
        if self.leases and connection is not None and not connection.is_closed():
            with contextlib.suppress(*_ERRORS):
                await connection.execute(
                    _LEAVE, self.namespace, self.owner, timeout=_CONNECT_TIMEOUT_SEC
                )
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection, self.member = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(timeout=_CONNECT_TIMEOUT_SEC)


async def _join(connection: asyncpg.Connection, namespace: int) -> int:
    """Take the lowest free member number of `namespace` (a session advisory lock)."""
    for member in range(_MAX_MEMBERS):
        if await connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", namespace, member):
            return member
    raise Unreachable(f"more than {_MAX_MEMBERS} gateways share the limits namespace")
