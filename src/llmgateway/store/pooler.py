"""What stands between llmgateway and PostgreSQL, and what that allows.

A transaction pooler (PgBouncer's `pool_mode = transaction`, RDS Proxy, Supabase's or Neon's
pooler) hands each transaction to whichever server connection is free, so nothing may outlive a
transaction there: no named prepared statements, no `LISTEN`, no session advisory locks, no
`SET`. A session pooler keeps one server connection per client connection, as PostgreSQL itself
does. So a connection is one of three `Mode`s:

- `DIRECT`: PostgreSQL itself (or a plain TCP proxy): everything works.
- `SESSION`: a session pooler: everything works, one server connection held per client one.
- `TRANSACTION`: a transaction pooler: statements are unnamed (prepared anew each time), and the
  session features need `database.direct_url` (store notices, advisory locks) or fall back
  (polling refresh, lease rows).

`database.pooler: auto` (the default) finds the mode from the server's answers. PostgreSQL
announces its backend's process id when a connection opens (BackendKeyData) and
`pg_backend_pid()` names the same process; a pooler, whose client connections are bound to no
one backend, announces an id of its own making. The same id: `DIRECT`. Another: a pooler, taken
for `TRANSACTION` (a session pooler looks the same from here; declare `pgbouncer_session` to
use named statements and the session features through it). The check costs one query on a
connection opened anyway, or one short connection when a store opens.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import URL, make_url

from llmgateway.config.settings import Pooler

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("llmgateway.store")

DETECT_TIMEOUT_SEC = 5.0
"""How long opening a store waits for the server's answers before assuming a pooler."""


class Mode(enum.StrEnum):
    """How a connection reaches PostgreSQL (see the module's docstring)."""

    DIRECT = "direct"
    SESSION = "session"
    TRANSACTION = "transaction"

    @property
    def keeps_sessions(self) -> bool:
        """Whether session state (named statements, LISTEN, session locks) lasts here."""
        return self is not Mode.TRANSACTION


_DECLARED = {
    Pooler.NONE: Mode.DIRECT,
    Pooler.PGBOUNCER_SESSION: Mode.SESSION,
    Pooler.PGBOUNCER_TRANSACTION: Mode.TRANSACTION,
}


def declared(pooler: Pooler) -> Mode | None:
    """The mode `database.pooler` states, or None for `auto`."""
    return _DECLARED.get(pooler)


_Url = TypeVar("_Url", str, URL)


def session_place(url: _Url, direct: _Url | None, pooler: Pooler) -> tuple[_Url, Pooler]:
    """Where a session connection goes and how to take it (`connect`'s `pooler`): to `direct`
    (`database.direct_url`) when given, checked from the server's answers unless the operator
    declared session poolers (then a pooler there is trusted to be one); else to `url`."""
    if direct is None:
        return url, pooler
    return direct, Pooler.PGBOUNCER_SESSION if pooler is Pooler.PGBOUNCER_SESSION else Pooler.AUTO


def libpq_dsn(url: str | URL) -> str:
    """The plain `postgresql://` DSN asyncpg takes, from a SQLAlchemy URL (any driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def detect(connection: asyncpg.Connection) -> Mode:
    """`DIRECT` when the backend that answers is the one announced at connect, else
    `TRANSACTION`. The query runs in a transaction: safe through any pooler."""
    async with connection.transaction():
        pid = await connection.fetchval("SELECT pg_backend_pid()")
    return Mode.DIRECT if pid == connection.get_server_pid() else Mode.TRANSACTION


async def connect(
    url: str | URL, pooler: Pooler, *, connect_timeout: float, **options: Any
) -> tuple[asyncpg.Connection, Mode]:
    """A raw asyncpg connection that names no prepared statement (safe whatever is in
    between), and the mode of what it goes through (declared, else detected on it); opening
    it and detecting take at most `connect_timeout` each (TimeoutError)."""
    import asyncpg

    connection = await asyncpg.connect(
        libpq_dsn(url), timeout=connect_timeout, statement_cache_size=0, **options
    )
    try:
        async with asyncio.timeout(connect_timeout):  # a server that logs in but never answers
            mode = declared(pooler) or await detect(connection)
    except BaseException:
        connection.terminate()
        raise
    return connection, mode


async def find_mode(url: URL, pooler: Pooler) -> Mode | None:
    """The mode of `url` as declared, else found on one short connection; None when the server
    could not be asked (the caller assumes the safe `TRANSACTION` then)."""
    mode = declared(pooler)
    if mode is not None:
        return mode
    import asyncpg

    try:
        connection, mode = await connect(url, pooler, connect_timeout=DETECT_TIMEOUT_SEC)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        if not _login_refused(error):  # a refused login is reported by the caller's own connect
            log.warning(
                "could not ask the database what serves it (%s): assuming a transaction "
                "pooler (unnamed statements) until restart; set database.pooler to say which",
                type(error).__name__,
            )
        return None
    await connection.close(timeout=DETECT_TIMEOUT_SEC)
    return mode


def _login_refused(error: BaseException) -> bool:
    """Whether `error` is the server refusing the login: PostgreSQL says so with SQLSTATE
    class 28, PgBouncer with 08P01 and an "authentication failed" message."""
    import asyncpg

    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        return True
    return "authentication failed" in str(error)


@dataclass(frozen=True, slots=True)
class Plan:
    """How a PostgreSQL store is reached: `mode` of its pooled connections (`url`), whether
    that was found (declared or asked) or assumed (the server did not answer at start), and
    `direct`, PostgreSQL itself for the session features (`database.direct_url`)."""

    url: URL = field(repr=False)
    mode: Mode
    found: bool
    pooler: Pooler
    direct: URL | None = field(default=None, repr=False)
    schema: str | None = None  # the search path of every connection, `direct`'s included

    def session_target(self) -> tuple[URL, Pooler] | None:
        """Where a session feature (the notice listener) connects, with how to take that
        connection (`connect`'s `pooler`: a pooler found there is refused unless declared as
        session pooling); None when there is no such place: poll instead."""
        if self.direct is None and self.found and not self.mode.keeps_sessions:
            return None
        return session_place(self.url, self.direct, self.pooler)

    def describe(self) -> str:
        """One phrase for logs and `/readyz`: what serves the pooled connections."""
        how = ("declared" if declared(self.pooler) else "detected") if self.found else "assumed"
        names = {
            Mode.DIRECT: "PostgreSQL directly",
            Mode.SESSION: "a session pooler",
            Mode.TRANSACTION: "a transaction pooler",
        }
        direct = ", direct_url for session features" if self.direct is not None else ""
        return f"{names[self.mode]} ({how}{direct})"
