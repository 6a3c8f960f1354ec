"""The original llmGateway's PostgreSQL tables: recognised, renamed out of the way, imported.

The original created five tables at start-up (`providers`, `proxies`, `provider_proxy_status`,
`api_keys`, `key_model_status`) and kept no migration history. Its `providers` and `proxies`
clash with ours by name, and so do its serial sequences (`providers_id_seq`, …). Inside the
migration's transaction, before the migrations run, `prepare` finds them (by their columns, and
by the absence of our `alembic_version`), refuses while the original still seems to run, and
renames each table with its indexes, constraints and sequences to `llmgw_original_<name>`; after
the migrations `original_copy.copy` imports the rows. One transaction: a failure anywhere rolls
the renames back too (PostgreSQL's DDL is transactional). The original ran on PostgreSQL only;
nothing here runs on SQLite.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.store.tables import metadata

if TYPE_CHECKING:
    from llmgateway.config.settings import ProviderSettings

PREFIX = "llmgw_original_"
"""What the original's tables (and their indexes, constraints, sequences) are renamed with."""

TABLES = ("key_model_status", "api_keys", "provider_proxy_status", "proxies", "providers")
"""The original's tables, those that refer to others first (the order `DROP TABLE` takes)."""

STILL_WRITING_SEC = 600.0
"""A key check the original recorded this recently means it may still run: the import refuses
(unless forced), since the original would keep writing to tables that are being renamed."""

_MAX_NAME = 63  # PostgreSQL's identifier length: a longer name would be cut, and might clash


class OriginalDatabaseError(RuntimeError):
    """The original's tables cannot be imported as they are; the message says what to do."""


class StillWritingError(OriginalDatabaseError):
    """The original llmGateway recorded a key check moments ago: it may still be running."""


class State(enum.StrEnum):
    """What became of the original's tables."""

    IMPORTED = "imported"  # renamed and imported now
    KEPT = "kept"  # imported by an earlier run; the renamed tables are still there
    REFUSED = "refused"  # (dry run only) found, but the original still seems to run


@dataclass(frozen=True, slots=True)
class Adoption:
    """What an import needs from the config and the command line: each configured provider's
    (type, enabled), whether to import while the original seems to run, and whether to roll
    everything back at the end (a dry run)."""

    providers: Mapping[str, tuple[str, bool]]
    force: bool = False
    dry_run: bool = False
    lock_wait_sec: float = 30.0  # how long a rename waits for a table the original still uses

    @classmethod
    def of(
        cls,
        providers: Mapping[str, ProviderSettings],
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> Adoption:
        """The adoption for the config's `providers`."""
        wanted = {name: (p.provider_type, p.enabled) for name, p in providers.items()}
        return cls(wanted, force, dry_run)


@dataclass(frozen=True, slots=True)
class ProviderImport:
    """What was imported of one of the original's providers. `statuses` are (status, rows);
    `due` counts the rows whose next check had come; `configured` is False for a provider the
    config no longer has (imported inactive)."""

    name: str
    configured: bool
    keys: int
    rows: int
    due: int
    statuses: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Report:
    """What was found and done. `last_check_age`: seconds since the original's newest key
    check (None: it never checked one). `drop_sql` drops the renamed tables; `restore_sql`
    drops ours and renames the original's back (statements, in order)."""

    state: State
    schema: str
    last_check_age: float | None = None
    providers: tuple[ProviderImport, ...] = ()
    unknown_statuses: int = 0
    proxies: int = 0
    drop_sql: tuple[str, ...] = ()
    restore_sql: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """The outcome of `prepare`: a report already final (`KEPT`, `REFUSED`), or (`pending`) the
    tables renamed and waiting for the migrations and `original_copy.copy`."""

    report: Report
    pending: bool = False


@dataclass(frozen=True, slots=True)
class _Found:
    schema: str
    columns: Mapping[str, frozenset[str]]

    @property
    def ours(self) -> bool:
        return "alembic_version" in self.columns

    @property
    def original(self) -> bool:
        """The original's layout: its `providers` (a name, none of our columns) and its keys."""
        providers = self.columns.get("providers", frozenset())
        return (
            "name" in providers
            and "provider_type" not in providers
            and {"id", "provider_id", "key_value"} <= self.columns.get("api_keys", frozenset())
            and {"key_id", "model_name", "status"} <= self.columns.get("key_model_status", set())
        )

    @property
    def renamed(self) -> list[str]:
        return [PREFIX + table for table in TABLES if PREFIX + table in self.columns]


async def prepare(conn: AsyncConnection, adoption: Adoption | None, now: float) -> Prepared | None:
    """Find the original's tables in the current schema (None: there are none, the usual case)
    and, unless the original still seems to run, rename them; raises `OriginalDatabaseError`
    when they cannot be imported. `adoption` None (a caller without the config) refuses to
    import them."""
    found = await _find(conn)
    if found is None:
        return None
    renamed = found.renamed
    if not found.original:
        if found.ours:  # a later run (or stray tables of the original's beside ours)
            drop, restore = await sql(conn, found.schema)
            kept = Report(State.KEPT, found.schema, drop_sql=drop, restore_sql=restore)
            return Prepared(kept) if drop else None
        raise OriginalDatabaseError(
            f"schema {found.schema!r} holds {', '.join(renamed)} (the original llmGateway's "
            "tables, renamed by an earlier upgrade) but not llmgateway's own tables: finish "
            "going back to the original (rename them back) or drop them, then run again"
        )
    if found.ours:
        raise OriginalDatabaseError(
            f"schema {found.schema!r} holds the original llmGateway's tables and llmgateway's "
            "alembic_version table: if you went back to the original, drop alembic_version "
            "too (DROP TABLE alembic_version;), then run `llmgateway db upgrade` again"
        )
    if renamed:
        raise OriginalDatabaseError(
            f"schema {found.schema!r} holds both the original llmGateway's tables and "
            f"{', '.join(renamed)} from an earlier upgrade: drop or rename one set, then run again"
        )
    if adoption is None:
        raise OriginalDatabaseError(
            f"schema {found.schema!r} holds the original llmGateway's tables: import them with "
            "`llmgateway db upgrade` (it needs the config for the providers' types)"
        )
    age = await _last_check_age(conn, now)
    if age is not None and age < STILL_WRITING_SEC and not adoption.force:
        if adoption.dry_run:
            return Prepared(Report(State.REFUSED, found.schema, age))
        raise StillWritingError(still_writing(age))
    tables = [table for table in TABLES if table in found.columns]
    proxies = 0
    if "address" in found.columns.get("proxies", ()):  # never filled by the original, in practice
        proxies = int(await conn.scalar(sa.text("SELECT count(*) FROM proxies")) or 0)
    else:  # not the original's (nor ours: the migrations will say it clashes)
        tables = [table for table in tables if table != "proxies"]
    await _rename(conn, await _renames(conn, found.schema, tables, _with_prefix), adoption)
    return Prepared(Report(State.IMPORTED, found.schema, age, proxies=proxies), pending=True)


async def _rename(conn: AsyncConnection, statements: Sequence[str], adoption: Adoption) -> None:
    """Run the renames, each waiting at most `adoption.lock_wait_sec` for a table in use (a
    forced import while the original still runs would otherwise wait for it forever)."""
    wait_ms = max(1, round(adoption.lock_wait_sec * 1000))
    await conn.execute(sa.text(f"SET LOCAL lock_timeout = {wait_ms}"))
    try:
        for statement in statements:
            await conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise OriginalDatabaseError(
            f"the original llmGateway's tables are in use (a rename waited "
            f"{adoption.lock_wait_sec:g} s for a lock): stop the original's gateway and worker "
            "first, then run again; nothing was changed"
        ) from None
    await conn.execute(sa.text("SET LOCAL lock_timeout = 0"))


def still_writing(age: float) -> str:
    """Why the import refuses while the original's last key check is `age` seconds old."""
    when = "in the future" if age < 0 else f"{age:.0f} s ago"
    return (
        f"the original llmGateway recorded a key check {when} (less than "
        f"{STILL_WRITING_SEC / 60:.0f} min): it seems to be still running. Stop its gateway "
        "and worker first, then run `llmgateway db upgrade` again; if it is stopped already, "
        "`llmgateway db upgrade --force` imports anyway"
    )


async def sql(conn: AsyncConnection, schema: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`drop_sql` and `restore_sql` of a `Report`, read from the catalog as it is now (empty
    when no renamed table is left)."""
    quote = conn.dialect.identifier_preparer.quote
    present = await _columns(conn, [PREFIX + table for table in TABLES])
    kept = [PREFIX + table for table in TABLES if PREFIX + table in present]
    if not kept:
        return (), ()
    drop = "DROP TABLE " + ", ".join(f"{quote(schema)}.{quote(t)}" for t in kept) + ";"
    ours = [t.name for t in reversed(metadata.sorted_tables)] + ["alembic_version"]
    back = await _renames(conn, schema, kept, _without_prefix)
    restore = (
        "BEGIN;",
        "DROP TABLE " + ", ".join(f"{quote(schema)}.{quote(t)}" for t in ours) + ";",
        *(statement + ";" for statement in back),
        "COMMIT;",
    )
    return (drop,), restore


async def present(conn: AsyncConnection) -> bool:
    """Whether the current schema holds tables `prepare` has to act on or refuse: the
    original's own, not yet imported (its renamed tables, kept after an import, are not)."""
    try:
        found = await _find(conn)
    except OriginalDatabaseError:
        return True  # `prepare` explains it
    return found is not None and found.original


async def _find(conn: AsyncConnection) -> _Found | None:
    schema = await conn.scalar(sa.text("SELECT current_schema()"))
    if schema is None:
        return None
    names = [*TABLES, *(PREFIX + t for t in TABLES), "alembic_version"]
    columns = await _columns(conn, names)
    interesting = set(columns) - {"alembic_version", "providers", "proxies"}
    found = _Found(str(schema), columns)
    if interesting or found.original:
        return found
    if "providers" in columns and not found.ours:
        raise OriginalDatabaseError(
            f"schema {schema!r} has a table `providers` that is neither llmgateway's nor the "
            "original llmGateway's: give llmgateway its own database or schema"
        )
    return None


_COLUMNS = sa.text(
    "SELECT c.relname, a.attname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
    "AND NOT a.attisdropped "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname IN :names"
).bindparams(sa.bindparam("names", expanding=True))


async def _columns(conn: AsyncConnection, names: Sequence[str]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for table, column in await conn.execute(_COLUMNS, {"names": list(names)}):
        found.setdefault(table, set()).add(column)
    return {table: frozenset(columns) for table, columns in found.items()}


async def _last_check_age(conn: AsyncConnection, now: float) -> float | None:
    newest = await conn.scalar(
        sa.text("SELECT extract(epoch FROM max(last_checked))::float8 FROM key_model_status")
    )
    return None if newest is None else now - float(newest)


# What belongs to a table and has a name of its own: its indexes (renaming the index of a
# primary key or unique constraint renames the constraint), its other constraints (foreign
# keys, checks) and the sequences its serial or identity columns own.
_BELONGINGS = sa.text(
    "SELECT 'INDEX', i.relname, t.relname FROM pg_catalog.pg_index x "
    "JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid "
    "JOIN pg_catalog.pg_class t ON t.oid = x.indrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = :schema AND t.relname IN :tables "
    "UNION ALL "
    "SELECT 'CONSTRAINT', c.conname, t.relname FROM pg_catalog.pg_constraint c "
    "JOIN pg_catalog.pg_class t ON t.oid = c.conrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = :schema AND t.relname IN :tables AND c.contype NOT IN ('p', 'u', 'x') "
    "UNION ALL "
    "SELECT 'SEQUENCE', s.relname, t.relname FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
    "JOIN pg_catalog.pg_class t ON t.oid = d.refobjid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE d.classid = 'pg_catalog.pg_class'::regclass "
    "AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') "
    "AND n.nspname = :schema AND t.relname IN :tables "
    "ORDER BY 1, 3, 2"
).bindparams(sa.bindparam("tables", expanding=True))


async def _renames(
    conn: AsyncConnection, schema: str, tables: Sequence[str], rename: Callable[[str], str]
) -> list[str]:
    """The statements that rename `tables` and what belongs to them with `rename`: the
    constraints, indexes and sequences first, then the tables."""
    quote = conn.dialect.identifier_preparer.quote
    at = quote(schema)
    statements: list[str] = []
    rows = await conn.execute(_BELONGINGS, {"schema": schema, "tables": list(tables)})
    for kind, name, table in rows:
        if (new := rename(name)) == name:
            continue
        if kind == "CONSTRAINT":
            target = f"TABLE {at}.{quote(table)} RENAME CONSTRAINT {quote(name)}"
        else:
            target = f"{kind} {at}.{quote(name)} RENAME"
        statements.append(f"ALTER {target} TO {quote(new)}")
    for table in tables:
        if (new := rename(table)) != table:
            statements.append(f"ALTER TABLE {at}.{quote(table)} RENAME TO {quote(new)}")
    return statements


def _with_prefix(name: str) -> str:
    if len(PREFIX + name) > _MAX_NAME:
        raise OriginalDatabaseError(
            f"the original's {name!r} is too long to rename to {PREFIX}…: rename it to a "
            f"name of at most {_MAX_NAME - len(PREFIX)} characters, then run again"
        )
    return PREFIX + name


def _without_prefix(name: str) -> str:
    return name.removeprefix(PREFIX)
