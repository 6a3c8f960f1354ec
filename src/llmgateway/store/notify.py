"""Changes that must not wait for the next delta refresh, spread at once on PostgreSQL.

Writers call `publish()` inside the transaction that makes a change: PostgreSQL delivers the
notice at commit and drops it on rollback, so a receiver never hears of a change it cannot read
yet. The payload is tiny (`kind:revision:detail`); receivers react by running their delta
refresh at once (coalesced: many notices during one refresh cause one more refresh, not many).
A `Listener` holds one dedicated asyncpg connection per process, besides the engine's pool of
`database.pool_size`, and reconnects when it drops; each time it starts listening it announces
`reconnected`, since notices sent before then were missed. SQLite has no notices: there the
delta refresh is the only way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmgateway.config.settings import Pooler
from llmgateway.core.outcomes import KeyStatus
from llmgateway.store import pooler
from llmgateway.store.connect import masked_url

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("llmgateway.notify")

CHANNEL = "llmgateway_changes"
"""The PostgreSQL notification channel every llmgateway process listens on."""

URGENT = frozenset(
    {
        KeyStatus.INVALID_KEY,
        KeyStatus.NO_ACCESS,
        KeyStatus.RATE_LIMITED,
        KeyStatus.NO_QUOTA,
        KeyStatus.NO_MODEL,
    }
)
"""Statuses that take a key out of selection: other gateways must hear of them at once."""


class Kind(enum.StrEnum):
    """What changed."""

    STATUS = "status"  # the gateway wrote key findings (invalid, rate-limited, no quota)
    KEYS = "keys"  # keys or providers added, removed or restored by a sync
    PROBES = "probes"  # the Keeper wrote probe results that change key statuses
    PROXIES = "proxies"  # proxies added, removed, found dead or alive
    BREAKER = "breaker"  # a circuit breaker opened (detail: which one)
    MODELS = "models"  # the Keeper stored a provider's new upstream model names (detail: which)
    CONFIG = "config"  # `llmgateway reload` asked every process to re-read its config file
    CLIENTS = "clients"  # `llmgateway clients` created, changed or removed a client
    RECONNECTED = "reconnected"  # local only: the listener (re)connected, earlier ones missed
    PING = "ping"  # a listener checking its own registration (detail: its token); ignored


@dataclass(frozen=True, slots=True)
class Notice:
    """One received notice. `revision` is the store revision of the change (0: none)."""

    kind: str
    revision: int = 0
    detail: str = ""

    @classmethod
    def parse(cls, payload: str) -> Notice:
        """The notice in a payload; a payload from elsewhere still yields a notice."""
        kind, _, rest = payload.partition(":")
        number, _, detail = rest.partition(":")
        return cls(kind, int(number) if number.isdigit() else 0, detail)

    def payload(self) -> str:
        return f"{self.kind}:{self.revision}:{self.detail}"


async def publish(conn: AsyncConnection, kind: Kind, revision: int, detail: str = "") -> None:
    """Announce a change from inside the transaction that makes it (a no-op on SQLite).
    `detail` must hold no secret: every process on the database can read it."""
    if conn.dialect.name != "postgresql":
        return
    payload = Notice(kind.value, revision, detail).payload()
    await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, payload)))


async def notify(engine: AsyncEngine, kind: Kind, detail: str = "") -> None:
    """Announce something that is not a store write (e.g. a breaker opened) to every process;
    a no-op on SQLite. `detail` must hold no secret."""
    if engine.dialect.name != "postgresql":
        return
    async with engine.begin() as conn:
        await publish(conn, kind, 0, detail)


@dataclass(slots=True)
class Listener:
    """Receives notices on one dedicated connection and hands each to `on_notice`.

    `run()` listens until cancelled, reconnecting after `retry_sec` when the connection fails;
    `listening` is set while it listens. `on_notice` runs in the event loop and must be quick
    (e.g. set an `asyncio.Event`).

    A registration that is lost without the connection dropping (a pooler that moved the
    session, an `UNLISTEN`) is found by echoes: after `LISTEN`, and every `keepalive_sec`, the
    listener sends itself a `ping` notice and expects it back within `echo_timeout_sec`;
    without it, it connects and listens again (announcing `reconnected`, so the receiver
    catches up). A connection that goes through a transaction pooler is refused (`pooler`
    says how to take it, see `store.pooler.connect`), and so is one where three fresh
    registrations in a row heard no echo: `run()` then logs why and returns, and the
    receiver's delta refresh is the only way (`unavailable` says why).
    """

    url: str | URL = field(repr=False)
    on_notice: Callable[[Notice], None]
    pooler: Pooler = Pooler.AUTO
    retry_sec: float = 1.0
    keepalive_sec: float = 30.0
    echo_timeout_sec: float = 5.0
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0
    reconnects: int = 0
    unavailable: str = ""
    connection: asyncpg.Connection | None = field(default=None, repr=False)
    _token: str = field(default_factory=lambda: secrets.token_hex(8), repr=False)
    _echo: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _deaf: int = 0  # fresh connections in a row whose first echo never came

    async def run(self) -> None:
        import asyncpg  # PostgreSQL only: a SQLite gateway never loads the driver

        first = True
        while True:
            try:
                await self._listen_once(first)
            except _NoSession as error:
                self.unavailable = str(error)
                log.warning(
                    "store notices off: %s; the delta refresh alone follows the store", error
                )
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.warning(
                    "store notices unavailable (%s); retrying in %.0f s, delta refresh continues",
                    type(error).__name__,
                    self.retry_sec,
                )
            self.listening.clear()
            first = False
            await asyncio.sleep(self.retry_sec)

    async def _listen_once(self, first: bool) -> None:
        connection, mode = await pooler.connect(
            self.url,
            self.pooler,
            connect_timeout=10,
            server_settings={"application_name": "llmgateway-listener"},
        )
        lost = asyncio.Event()
        self.connection = connection
        try:
            if not mode.keeps_sessions:
                raise _NoSession(
                    f"{masked_url(self.url)} goes through a transaction pooler, where LISTEN "
                    "does not last; set database.direct_url to PostgreSQL itself (or "
                    "database.pooler: pgbouncer_session if that pooler keeps sessions)"
                )
            connection.add_termination_listener(lambda _conn: lost.set())
            await connection.add_listener(CHANNEL, self._received)
            if not await self._echoed(connection):
                self._deaf += 1
                if self._deaf >= _DEAF_LIMIT:
                    raise _NoSession(
                        f"{masked_url(self.url)} took LISTEN {self._deaf} times in a row, but "
                        "the listener's own notices never came back; set database.direct_url "
                        "to PostgreSQL itself"
                    )
                return
            self._deaf = 0
            self.listening.set()
            self.reconnects += not first
            # notices sent before this moment were missed: the receiver catches up now
            self.on_notice(Notice(Kind.RECONNECTED.value))
            while not lost.is_set():
                # a silently dead link or a lost registration shows up here
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self.keepalive_sec)
                if not lost.is_set() and not await self._echoed(connection):
                    return
            log.warning("store notice connection lost; reconnecting")
        finally:
            self.connection = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)

    async def _echoed(self, connection: asyncpg.Connection) -> bool:
        """Send this listener's own ping and wait for it: False (logged) when it never came."""
        self._echo.clear()
        ping = Notice(Kind.PING.value, 0, self._token).payload()
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, ping, timeout=10)
        try:
            await asyncio.wait_for(self._echo.wait(), timeout=self.echo_timeout_sec)
        except TimeoutError:
            log.warning(
                "store notices: the listener's own ping did not come back within %.0f s "
                "(registration lost); listening again",
                self.echo_timeout_sec,
            )
            return False
        return True

    def _received(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        notice = Notice.parse(payload)
        if notice.kind == Kind.PING:  # a listener's check of itself: this one's, or ignored
            if notice.detail == self._token:
                self._echo.set()
            return
        self.received += 1
        self.on_notice(notice)


_DEAF_LIMIT = 3
"""Fresh connections in a row without an echo before the listener gives up (and polls)."""


class _NoSession(Exception):
    """The listener's connection cannot keep a LISTEN (a transaction pooler)."""
