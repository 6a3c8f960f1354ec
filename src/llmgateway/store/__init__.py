"""The store: providers, keys, key status and proxies in SQLite (default) or PostgreSQL.

`Store` is the one seam between llmgateway and its database. Every write is one transaction
that takes the next global revision and stamps the rows it changes, so `snapshot(since)` can
give a gateway just what changed; a write that changed nothing is rolled back.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from llmgateway.config.settings import DatabaseSettings, Pooler, ProviderSettings
from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.observe.key_turns import TurnLog
from llmgateway.records import (
    KeyRow,
    ProxyRow,
    Snapshot,
    StatusCount,
    StatusEvent,
    SyncChanges,
)
from llmgateway.store import (
    breakers,
    connect,
    model_lists,
    notify,
    reconcile,
    schema,
    status,
    turns,
)
from llmgateway.store import pooler as pooler_mode
from llmgateway.store.connect import DatabaseUrlError, Migration, async_url, masked_url
from llmgateway.store.original import Adoption, OriginalDatabaseError
from llmgateway.store.pooler import Plan
from llmgateway.store.reconcile import UnknownProviderError
from llmgateway.store.schema import SchemaState

__all__ = [
    "Adoption",
    "DatabaseUrlError",
    "KeyRow",
    "Migration",
    "OriginalDatabaseError",
    "Plan",
    "ProxyRow",
    "SchemaState",
    "Snapshot",
    "StatusCount",
    "StatusEvent",
    "Store",
    "SyncChanges",
    "UnknownProviderError",
    "async_url",
    "masked_url",
]


class Store:
    """The database behind llmgateway. Build it with `Store.open(url)`; close it with `close()`
    (or use `async with`). `clock` gives the current epoch time for every stamp it writes.
    `turns` logs the keys that this process's status writes take out of service."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Callable[[], float] = time.time,
        sqlite_file: Path | None = None,
        plan: Plan | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.plan = plan
        self.turns = TurnLog(clock)
        self._file = None if sqlite_file is None else sqlite_file.absolute()
        self._identity = None if self._file is None else _identity(self._file)
        if self._identity is not None:
            sa.event.listen(engine.sync_engine, "do_connect", self._refuse_a_lost_file)

    def _refuse_a_lost_file(self, *_args: object) -> None:
        """Before a new pooled connection opens the SQLite file: refuse when the file at the
        path is no longer the one this store opened. A connection to a replacing file would
        take over the old one's `-shm` and `-wal` (same paths) and truncate what the open
        connections have memory-mapped: they would die of SIGBUS."""
        problem = self.file_problem()
        if problem is not None:
            raise sqlite3.OperationalError(problem)

    @classmethod
    async def open(
        cls,
        url: str | URL,
        pool_size: int = 5,
        *,
        schema: str | None = None,
        clock: Callable[[], float] = time.time,
        pooler: Pooler = Pooler.AUTO,
        direct_url: str | URL | None = None,
    ) -> Store:
        """A store on `url` (`sqlite:///file.db` or `postgresql://…`; the async driver is chosen
        here). `schema` sets PostgreSQL's search path. On PostgreSQL, what serves `url` is
        `pooler` as declared, else asked of the server on one short connection (`Plan`);
        `direct_url` is PostgreSQL itself, for migrations and the session features. The
        pooled connections are made on first use."""
        parsed = async_url(url)
        if parsed.get_backend_name() != "postgresql":
            engine = connect.create_engine(parsed, pool_size, schema)
            return cls(engine, clock, connect.sqlite_file(engine.url))
        found = await pooler_mode.find_mode(parsed, pooler)
        mode = found or pooler_mode.Mode.TRANSACTION
        direct = None if direct_url is None else async_url(direct_url)
        plan = Plan(parsed, mode, found is not None, pooler, direct, schema)
        named = mode.keeps_sessions
        engine = connect.create_engine(parsed, pool_size, schema, named_statements=named)
        return cls(engine, clock, None, plan)

    @classmethod
    async def configured(
        cls, database: DatabaseSettings, *, clock: Callable[[], float] = time.time
    ) -> Store:
        """The store the `database` settings describe."""
        return await cls.open(
            database.async_url,
            database.pool_size,
            clock=clock,
            pooler=database.pooler,
            direct_url=database.direct_async_url,
        )

    def file_problem(self) -> str | None:
        """Why the SQLite file this store opened is no longer at its path (deleted, or replaced
        by another file, while this process still writes to the old one), or None: all is
        well, or the store is not a SQLite file (PostgreSQL). One `stat`, cheap enough to call
        at every refresh."""
        if self._file is None or self._identity is None:
            return None
        try:
            found = _identity(self._file, missing_ok=False)
        except FileNotFoundError:
            return (
                f"the SQLite file {self._file} was deleted while in use: what is written now "
                "is lost; restore it from a backup and restart (or restart to begin a new one)"
            )
        except OSError as error:
            return f"the SQLite file {self._file} cannot be checked: {error.strerror}"
        if found != self._identity:
            return (
                f"the SQLite file {self._file} was replaced by another file while in use; "
                "this process still uses the old one: restart it to use the new file"
            )
        return None

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def upgrade(self) -> str:
        """Apply the migrations up to head (safe to run from several processes at once);
        returns the schema revision. The original llmGateway's tables, if found, are refused
        (`OriginalDatabaseError`): importing them takes the config, see `migrate`."""
        return (await self.migrate()).revision

    async def migrate(self, adoption: Adoption | None = None) -> Migration:
        """`upgrade`, importing the original llmGateway's tables when there are (with the
        providers' types of `adoption`; see `llmgateway.store.original`)."""
        now = self.clock()
        if self.plan is None:
            return await connect.upgrade(self.engine, adoption=adoption, now=now)
        plan = self.plan
        return await connect.upgrade(self.engine, plan.direct, plan.schema, adoption, now)

    async def schema_state(self) -> SchemaState:
        """Whether the store can serve as it is (`SchemaState`): a few small queries, no
        Alembic. A SQLite file that does not exist yet is created, empty."""
        async with self.engine.connect() as conn:
            return await schema.schema_state(conn)

    async def sync_providers(self, settings: Mapping[str, ProviderSettings]) -> int:
        """Make the providers table match the config: upsert each (active when `enabled`), and
        deactivate the ones no longer configured, keeping their keys and history.
        Returns how many providers changed."""
        wanted = {name: (p.provider_type, p.enabled) for name, p in settings.items()}
        async with self._write() as (conn, revision, transaction):
            changed = await reconcile.sync_providers(conn, wanted, revision, self.clock())
            if changed:
                await notify.publish(conn, notify.Kind.KEYS, revision)
            await _keep_if(transaction, changed)
            return changed

    async def sync_keys(
        self,
        provider: str,
        keys: Collection[str],
        models: Sequence[str],
        shared: bool,
        *,
        prune: bool = True,
        sources: Mapping[str, str] | None = None,
    ) -> SyncChanges:
        """Make the provider's active keys equal `keys`: a new key gets `untested` rows due for a
        check now, a missing one is deactivated (history kept), one that comes back is restored.
        Status rows follow `models` (one `ALL_MODELS` row when `shared`). With `prune=False`
        nothing is removed (the key files could not all be read). `sources` gives where each
        key was found (`file:line`), recorded for `llmgateway keys` and the key-change logs."""
        row_models = [ALL_MODELS] if shared else list(models)
        async with self._write() as (conn, revision, transaction):
            pid = await reconcile.provider_id(conn, provider)
            changes, touched, recorded = await reconcile.sync_keys(
                conn, pid, keys, row_models, revision, self.clock(), prune=prune, sources=sources
            )
            if touched:
                await notify.publish(conn, notify.Kind.KEYS, revision, provider)
            await _keep_if(transaction, touched + recorded)
            return changes

    async def sync_proxies(
        self, provider: str, urls: Collection[str], *, prune: bool = True
    ) -> SyncChanges:
        """Make the provider's active proxies equal `urls`, like `sync_keys`."""
        async with self._write() as (conn, revision, transaction):
            pid = await reconcile.provider_id(conn, provider)
            changes, touched = await reconcile.sync_proxies(
                conn, pid, urls, revision, self.clock(), prune=prune
            )
            if touched:
                await notify.publish(conn, notify.Kind.PROXIES, revision, provider)
            await _keep_if(transaction, touched)
            return changes

    async def snapshot(
        self, since_revision: int = 0, key_range: tuple[int, int] | None = None
    ) -> Snapshot:
        """The pool for a gateway: every active row, or (with `since_revision`) every row
        changed after that revision, removed ones included with `active=False`. `key_range`
        (`lo < key_id <= hi`) reads a large pool page by page."""
        pages = [page async for page in self.snapshot_pages(since_revision, key_range)]
        keys = [row for page in pages for row in page.keys]
        return Snapshot(revision=pages[0].revision, keys=keys, proxies=pages[0].proxies)

    async def snapshot_pages(
        self, since_revision: int = 0, key_range: tuple[int, int] | None = None, page: int = 1000
    ) -> AsyncGenerator[Snapshot, None]:
        """`snapshot()` streamed: key rows `page` at a time, every proxy row in the first page
        (there is always one). Holds a connection until the iteration ends: wrap it in
        `contextlib.aclosing` where it may stop early."""
        async with self.engine.connect() as conn:
            async for part in status.snapshot_pages(conn, since_revision, key_range, page):
                yield part

    async def max_key_id(self) -> int:
        """The highest key id in the store (0 when it has none)."""
        async with self.engine.connect() as conn:
            return await status.max_key_id(conn)

    async def apply_events(self, events: Sequence[StatusEvent]) -> None:
        """Write a batch of status events in one transaction (see `StatusEvent`); a key this
        takes out of service is logged once (`turns`)."""
        if not events:
            return
        async with self.engine.begin() as conn:
            revision = await status.bump_revision(conn)
            watched = turns.watched([(event.key_id, event.status) for event in events])
            before = await turns.statuses_of(conn, watched)
            await status.apply_events(conn, events, revision)
            found = await turns.turned(conn, before)
            if any(event.status in notify.URGENT for event in events):
                await notify.publish(conn, notify.Kind.STATUS, revision)
        self.turns.report(found)

    async def status_counts(self) -> list[StatusCount]:
        """Active (key, model) rows grouped by provider, model and status."""
        async with self.engine.connect() as conn:
            return await status.status_counts(conn)

    async def revision(self) -> int:
        """The current global revision."""
        async with self.engine.connect() as conn:
            return await status.read_revision(conn)

    async def save_model_names(self, provider: str, names: Sequence[str]) -> bool:
        """Record the model names the Keeper fetched from `provider`'s upstream, in one
        transaction. When they differ from the stored ones they are stamped with a new revision
        (announced on PostgreSQL) and True is returned; otherwise only the fetch time moves."""
        async with self._write() as (conn, revision, _):
            pid = await reconcile.provider_id(conn, provider)
            now = self.clock()
            if await model_lists.names_of(conn, pid) == list(names):
                await model_lists.touch(conn, pid, now)
                return False
            await model_lists.save(conn, pid, names, revision, now)
            await notify.publish(conn, notify.Kind.MODELS, revision, provider)
            return True

    async def model_name_revisions(self) -> dict[str, int]:
        """The revision of each provider's stored model names (one small query: a gateway's
        check at every refresh)."""
        async with self.engine.connect() as conn:
            return await model_lists.revisions(conn)

    async def model_names(self, wanted: Collection[str]) -> dict[str, tuple[int, list[str]]]:
        """The (revision, names) stored for each provider in `wanted` that has any."""
        async with self.engine.connect() as conn:
            return await model_lists.names_by_provider(conn, wanted)

    async def breakers(self) -> list[breakers.BreakerRow]:
        """The circuit breakers as gateways last reported them, with pending reset requests."""
        async with self.engine.connect() as conn:
            return await breakers.read(conn)

    async def save_breakers(self, states: Mapping[str, tuple[int, int]]) -> None:
        """Record each provider's (breaker state, egress breakers not closed)."""
        async with self.engine.begin() as conn:
            await breakers.save(conn, states, self.clock())

    async def request_breaker_reset(self, provider: str) -> None:
        """Ask running gateways to close `provider`'s breakers (`llmgateway breaker reset`)."""
        async with self.engine.begin() as conn:
            await breakers.request_reset(conn, provider, self.clock())

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[AsyncConnection, int, AsyncTransaction]]:
        """A write transaction with its revision taken first (so SQLite takes its write lock
        up front and waits on `busy_timeout` instead of failing on a lock upgrade)."""
        async with self.engine.connect() as conn, conn.begin() as transaction:
            yield conn, await status.bump_revision(conn), transaction


def _identity(path: Path, *, missing_ok: bool = True) -> tuple[int, int] | None:
    """The (device, inode) of a file: what stays the same while it is the same file."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return found.st_dev, found.st_ino


async def _keep_if(transaction: AsyncTransaction, changed: int) -> None:
    """Roll back a write that changed nothing, so the revision only moves on real changes."""
    if not changed:
        await transaction.rollback()
