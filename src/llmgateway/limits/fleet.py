"""The `postgres` backend: each gateway counts locally against its share of every limit.

Gateways sharing one PostgreSQL database count each other without a table and without writes:
each holds one session-level advisory lock `(namespace, n)` on a connection of its own, and
reads the granted locks of its namespace from `pg_locks` every `gateway.refresh_interval_sec`.
With N live gateways, the one of rank r gets `share_of(limit, r, N)` of each limit (the shares
add up to the limit), and counts exactly against it in memory: no database round trip per
request. A gateway that dies loses its connection, hence its lock, and the others take over
its share at their next refresh.

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
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import make_url

from llmgateway.config.settings import KeyLimits
from llmgateway.limits.counts import LocalCounts, Refusal, share_of
from llmgateway.limits.outage import Outage, Unreachable

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


def namespace_of(prefix: str) -> int:
    """The advisory-lock namespace (a non-negative int4) of `limits.key_prefix`."""
    return zlib.crc32(prefix.encode()) & 0x7FFFFFFF


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (any driver) as the DSN asyncpg connects with."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(slots=True)
class PostgresBackend:
    """This gateway's place in the fleet (rank, size) and its exact local counts."""

    dsn: str = field(repr=False)
    namespace: int
    interval: float
    stale_after: float
    outage: Outage
    clock: Callable[[], float]
    name: str = "postgres"
    counts: LocalCounts = field(default_factory=LocalCounts)
    member: int | None = None
    rank: int = 0
    size: int = 1
    seen_at: float | None = None
    _connection: asyncpg.Connection | None = None

    async def take(self, slot: Slot, token: int, limits: KeyLimits, now: float) -> Refusal | None:
        """Count one request on `slot` against this gateway's share of each limit."""
        if self.seen_at is None or now - self.seen_at > self.stale_after:
            raise Unreachable("the gateway fleet could not be counted lately")
        most = self._share(limits.max_concurrent)
        rpm = self._share(limits.rpm)
        return self.counts.take(slot, (slot[0], token), most, rpm, now)

    def _share(self, limit: int | None) -> int | None:
        return None if limit is None else share_of(limit, self.rank, self.size)

    def give_back(self, provider: str, token: int) -> None:
        """The request held as `token` ended."""
        self.counts.give_back((provider, token))

    async def refresh(self) -> None:
        """Join the fleet if not in it (again), then count its live members."""
        connection = self._connection
        if connection is None or connection.is_closed():
            self.member = None
            connection = await asyncpg.connect(self.dsn, timeout=_CONNECT_TIMEOUT_SEC)
            self._connection = connection
        if self.member is None:
            self.member = await _join(connection, self.namespace)
        rows = await connection.fetch(_MEMBERS, self.namespace)
        members = sorted(int(row[0]) for row in rows)
        self.rank, self.size = members.index(self.member), len(members)
        self.seen_at = self.clock()

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
        """Leave the fleet (closing the connection releases the lock)."""
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
