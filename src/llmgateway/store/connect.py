"""Opening the database: URL rules, engine settings per dialect, and migrations to head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from llmgateway.observe.masking import mask
from llmgateway.private_files import create_private_file
from llmgateway.store import original

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only where migrations run: a gateway whose schema was prepared before it
# started never loads it (about 13 MiB less resident memory).

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_SQLITE_BUSY_TIMEOUT_MS = 5000
# Any constant works: it only keeps two processes from migrating the same database at once.
_MIGRATION_LOCK = 0x11A6A7E
_SCRIPT_LOCATION = "llmgateway.store:migrations"


class DatabaseUrlError(ValueError):
    """A database URL that cannot be used; the message shows it masked and says how to fix it."""


def async_url(url: str | URL) -> URL:
    """The URL with its async driver: `sqlite:///x.db` → `sqlite+aiosqlite:///x.db`,
    `postgresql://…` → `postgresql+asyncpg://…`. Anything else is a `DatabaseUrlError`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            f"database.url {mask(str(url))!r} is not a database URL; "
            "use sqlite:///data/llmgateway.db or postgresql://user:password@host:5432/dbname"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"database.url {masked_url(parsed)!r}: unsupported database {parsed.drivername!r}; "
            "use sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname"
        )
    return parsed.set(drivername=driver)


def masked_url(url: str | URL) -> str:
    """The URL fit for a log line or an error: the password hidden (`***`)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return mask(str(url))


_UNNAMED_STATEMENTS = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
"""asyncpg's and SQLAlchemy's statement caches off: every statement is the unnamed one."""


def create_engine(
    url: URL, pool_size: int, schema: str | None, *, named_statements: bool = True
) -> AsyncEngine:
    """An async engine for `url` (already `async_url`): SQLite in WAL mode with a busy timeout and
    foreign keys (its file created 0600 and its folders 0700 when missing), PostgreSQL with a
    bounded pool and optional search path. Without `named_statements` (through a transaction
    pooler) every statement is unnamed and prepared anew: nothing outlives its transaction."""
    if url.get_backend_name() == "sqlite":
        if schema is not None:
            raise DatabaseUrlError("a schema can only be chosen on PostgreSQL")
        path = sqlite_file(url)
        if path is not None:
            create_private_file(path)  # SQLite gives its -wal and -shm files the same mode
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, hide_parameters=True)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if schema is not None:
        if not named_statements:
            raise DatabaseUrlError(
                f"{masked_url(url)}: a schema cannot be chosen through a connection pooler "
                "(it would be session state); give the role a default search_path instead"
            )
        connect_args["server_settings"] = {"search_path": schema}
    if not named_statements:
        # asyncpg's statement cache and SQLAlchemy's both name their statements: off, so each
        # statement is the unnamed one, parsed again with its parameters (asyncpg re-sends the
        # Parse when its cache is off, so even a statement outside a transaction is safe)
        connect_args |= _UNNAMED_STATEMENTS
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,  # in a transaction of its own: safe through a pooler
        hide_parameters=True,  # errors and logs never carry a key
        connect_args=connect_args,
    )


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite database URL (None for PostgreSQL, in-memory or `file:` URIs)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 1 MiB of page cache per connection rather than SQLite's 2: each pooled connection fills
    # its own, and a gateway's write-behinds and refreshes keep several open (with 100k keys
    # the defaults cost the soak's RSS target its margin); the OS caches the file anyway
    cursor.execute("PRAGMA cache_size=-1024")
    cursor.close()


@dataclass(frozen=True, slots=True)
class Migration:
    """What `upgrade` did: the schema revision the database is at (with `dry_run`: the one it
    was at, as everything was rolled back), and what became of the original llmGateway's
    tables (None: there were none)."""

    revision: str
    original: original.Report | None = None
    dry_run: bool = False


async def upgrade(
    engine: AsyncEngine,
    direct: URL | None = None,
    schema: str | None = None,
    adoption: original.Adoption | None = None,
    now: float = 0.0,
) -> Migration:
    """Apply the migrations up to head in one transaction, importing the original llmGateway's
    tables when there are, as `adoption` says (`now`: the epoch time their last check is
    judged by; see `llmgateway.store.original`).
    On PostgreSQL a transaction-scoped advisory lock keeps two processes from migrating at once
    (it ends with the transaction: correct through a transaction pooler too). With `direct`
    (`database.direct_url`) they run on one connection of their own to it, in `schema` (the
    search path `engine`'s connections have) when given. An `adoption` with `dry_run` does it
    all and rolls it back."""
    if direct is not None:
        connect_args: dict[str, Any] = dict(_UNNAMED_STATEMENTS)
        if schema is not None:
            connect_args["server_settings"] = {"search_path": schema}
        engine = create_async_engine(
            direct, poolclass=NullPool, hide_parameters=True, connect_args=connect_args
        )
        try:
            return await upgrade(engine, adoption=adoption, now=now)
        finally:
            await engine.dispose()
    dry_run = adoption is not None and adoption.dry_run
    async with engine.connect() as conn, conn.begin() as transaction:
        before = await current_revision(conn) if dry_run else ""
        prepared = None
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            prepared = await original.prepare(conn, adoption, now)
        report = None if prepared is None else prepared.report
        if dry_run and not (prepared is not None and prepared.pending):
            await transaction.rollback()
            return Migration(before, report, dry_run=True)
        await conn.run_sync(_upgrade)
        if prepared is not None and prepared.pending and adoption is not None:
            from llmgateway.store.original_copy import copy

            report = await copy(conn, adoption, prepared.report, now)
        if dry_run:
            await transaction.rollback()
            return Migration(before, report, dry_run=True)
        return Migration(await current_revision(conn), report)


def _upgrade(connection: sa.Connection) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def current_revision(conn: AsyncConnection) -> str:
    """The schema revision the database is at ("" before any migration)."""
    from alembic.runtime.migration import MigrationContext

    return await conn.run_sync(
        lambda sync: MigrationContext.configure(sync).get_current_revision() or ""
    )


def head_revision() -> str:
    """The newest schema revision this version of llmgateway knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head or ""


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    return config
