"""Making the tables match the config and the files: set-based statements, no per-key round trip.

Each function runs inside the caller's write transaction, stamps what it changes with `revision`
and returns how much it changed (the caller rolls back a transaction that changed nothing).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import KeyStatus
from llmgateway.observe.masking import digest, suffix
from llmgateway.records import SyncChanges
from llmgateway.store.status import SQLITE_BULK
from llmgateway.store.tables import insert_into, key_status, keys, providers, proxies, proxy_status

_BATCH = 5000
_T = TypeVar("_T")


class UnknownProviderError(LookupError):
    """A provider name the store does not know: run `sync_providers` first."""


async def sync_providers(
    conn: AsyncConnection, wanted: Mapping[str, tuple[str, bool]], revision: int, now: float
) -> int:
    """Upsert `wanted` (name → (provider_type, enabled)); deactivate every provider not in it.

    Keys and history of a deactivated provider are kept. Returns the number of providers changed.
    """
    changed_ids: list[int] = []
    for name, (provider_type, enabled) in sorted(wanted.items()):
        insert = insert_into(conn, providers).values(
            name=name,
            provider_type=provider_type,
            active=enabled,
            created_at=now,
            updated_at=now,
            revision=revision,
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[providers.c.name],
            set_={
                "provider_type": insert.excluded.provider_type,
                "active": insert.excluded.active,
                "updated_at": insert.excluded.updated_at,
                "revision": insert.excluded.revision,
            },
            where=sa.or_(
                providers.c.provider_type != insert.excluded.provider_type,
                providers.c.active != insert.excluded.active,
            ),
        ).returning(providers.c.id)
        changed_ids.extend((await conn.execute(upsert)).scalars())
    gone = (
        sa.update(providers)
        .where(providers.c.active, providers.c.name.not_in(list(wanted)))
        .values(active=False, updated_at=now, revision=revision)
        .returning(providers.c.id)
    )
    changed_ids.extend((await conn.execute(gone)).scalars())
    if changed_ids:
        await _stamp_members(conn, changed_ids, revision)
    return len(changed_ids)


async def provider_id(conn: AsyncConnection, name: str) -> int:
    """The id of provider `name`, or `UnknownProviderError`."""
    found = await conn.scalar(sa.select(providers.c.id).where(providers.c.name == name))
    if found is None:
        raise UnknownProviderError(f"provider {name!r} is not in the store; sync providers first")
    return int(found)


async def sync_keys(
    conn: AsyncConnection,
    provider: int,
    wanted: Collection[str],
    models: Sequence[str],
    revision: int,
    now: float,
    *,
    prune: bool,
    sources: Mapping[str, str] | None = None,
) -> tuple[SyncChanges, int, int]:
    """Make the provider's active keys equal `wanted` (only add and restore when not `prune`),
    and its status rows equal `models` for every active key. Returns the changes, a count of
    every row changed that the pool sees (status rows included), and a count of keys whose
    `file:line` in `sources` (or missing digest) was recorded: that is not stamped with
    `revision`, as the pool does not use it."""
    changes, touched, recorded = await _sync_members(
        conn, keys, "value", provider, wanted, revision, now, prune, sources or {}
    )
    rows = await _sync_key_models(conn, provider, models, revision, now)
    return changes, rows + touched, recorded


async def sync_proxies(
    conn: AsyncConnection,
    provider: int,
    wanted: Collection[str],
    revision: int,
    now: float,
    *,
    prune: bool,
) -> tuple[SyncChanges, int]:
    """Make the provider's active proxies equal `wanted`; a new proxy gets an `untested` status."""
    changes, touched, _ = await _sync_members(
        conn, proxies, "url", provider, wanted, revision, now, prune
    )
    missing = (
        sa.select(
            proxies.c.id,
            sa.literal(KeyStatus.UNTESTED.value, sa.Text),
            sa.literal(now, sa.Double),
            sa.literal(revision, sa.BigInteger),
        )
        .where(proxies.c.provider_id == provider)
        .where(~sa.exists().where(proxy_status.c.proxy_id == proxies.c.id))
    )
    insert = sa.insert(proxy_status).from_select(
        ["proxy_id", "status", "next_check_at", "revision"], missing
    )
    inserted = (await conn.execute(insert)).rowcount
    return changes, touched + max(inserted, 0)


async def _sync_members(
    conn: AsyncConnection,
    table: sa.Table,
    column: str,
    provider: int,
    wanted: Collection[str],
    revision: int,
    now: float,
    prune: bool,
    sources: Mapping[str, str] | None = None,
) -> tuple[SyncChanges, int, int]:
    """Add, remove and restore members; with `sources` (keys), also record where each wanted
    key was found and fill in a missing digest. Returns the changes, the members changed and
    the keys whose place was recorded."""
    value = table.c[column]
    details = (keys.c.source, keys.c.digest) if sources is not None else ()
    rows = await conn.execute(
        sa.select(table.c.id, value, table.c.active, *details).where(
            table.c.provider_id == provider
        )
    )
    active: dict[str, int] = {}
    inactive: dict[str, int] = {}
    placed: list[tuple[int, str]] = []  # (id, file:line) to write
    hashed: list[tuple[int, str]] = []  # (id, digest) to write
    moved = 0
    for row_id, row_value, is_active, *known in rows:
        (active if is_active else inactive)[row_value] = row_id
        if sources is not None and row_value in sources:
            source, known_digest = known
            if source != sources[row_value]:
                placed.append((row_id, sources[row_value]))
                moved += bool(is_active) and source is not None
            if known_digest is None:
                hashed.append((row_id, digest(row_value)))
    wanted_set = set(wanted)
    added = sorted(wanted_set - active.keys() - inactive.keys())
    restored = [inactive[v] for v in wanted_set & inactive.keys()]
    removed = [i for v, i in active.items() if v not in wanted_set] if prune else []
    for batch in _batches(added):
        await conn.execute(
            sa.insert(table),
            [
                {
                    "provider_id": provider,
                    column: v,
                    "active": True,
                    "added_at": now,
                    "revision": revision,
                    **({} if sources is None else _found(v, sources)),
                }
                for v in batch
            ],
        )
    await _set_active(conn, table, removed, False, revision, now)
    await _set_active(conn, table, restored, True, revision, now)
    await _set_text(conn, keys.c.source, placed)
    await _set_text(conn, keys.c.digest, hashed)
    changes = SyncChanges(
        added=len(added),
        removed=len(removed),
        restored=len(restored),
        active=len(active) - len(removed) + len(added) + len(restored),
        moved=moved,
    )
    return changes, len(added) + len(removed) + len(restored), len(placed) + len(hashed)


def _found(value: str, sources: Mapping[str, str]) -> dict[str, str | None]:
    return {"source": sources.get(value), "digest": digest(value), "suffix": suffix(value)}


async def _set_text(
    conn: AsyncConnection, column: sa.Column[str | None], values: Sequence[tuple[int, str]]
) -> None:
    """Set `column` of the keys by id, (id, value) pairs. A line added at the top of a file
    moves every key below it, so the pairs travel as one JSON parameter per batch into one
    `UPDATE … FROM` (as status events do), not a statement per key."""
    if not values:
        return
    if conn.dialect.name == "sqlite" and not SQLITE_BULK:
        update = (
            sa.update(keys)
            .where(keys.c.id == sa.bindparam("p_id"))
            .values({column: sa.bindparam("p_value")})
        )
        for batch in _batches(values):
            await conn.execute(update, [{"p_id": i, "p_value": v} for i, v in batch])
        return
    statement = _bulk_text(conn.dialect.name, column)
    for batch in _batches(values):
        await conn.execute(statement, {"p_rows": json.dumps(batch)})


def _bulk_text(dialect: str, column: sa.Column[str | None]) -> sa.Update:
    """`UPDATE keys SET column = …` from a JSON array of [id, value] bound as `p_rows`."""
    rows = sa.bindparam("p_rows", type_=sa.Text)
    items = (
        sa.func.json_array_elements(sa.cast(rows, sa.JSON))
        if dialect == "postgresql"
        else sa.func.json_each(rows)
    )
    found = items.table_valued("value").alias("found")
    if dialect == "postgresql":
        key_id: sa.ColumnElement[int] = sa.cast(found.c.value.op("->>")(0), sa.Integer)
        value: sa.ColumnElement[Any] = found.c.value.op("->>")(1)
    else:
        key_id = sa.func.json_extract(found.c.value, "$[0]", type_=sa.Integer)
        value = sa.func.json_extract(found.c.value, "$[1]", type_=sa.Text)
    return sa.update(keys).where(keys.c.id == key_id).values({column: value})


async def _set_active(
    conn: AsyncConnection,
    table: sa.Table,
    ids: list[int],
    active: bool,
    revision: int,
    now: float,
) -> None:
    """Remove (or restore) members by id; their status rows are stamped so a delta shows them,
    and a restored member is due for a check at once."""
    status = key_status if table is keys else proxy_status
    status_fk = status.c.key_id if table is keys else status.c.proxy_id
    status_values: dict[str, Any] = {"revision": revision}
    if active:
        status_values["next_check_at"] = now
    for batch in _batches(ids):
        await conn.execute(
            sa.update(table)
            .where(table.c.id.in_(batch))
            .values(active=active, removed_at=None if active else now, revision=revision)
        )
        await conn.execute(sa.update(status).where(status_fk.in_(batch)).values(status_values))


async def _sync_key_models(
    conn: AsyncConnection, provider: int, models: Sequence[str], revision: int, now: float
) -> int:
    """Retire status rows of models no longer configured, revive and add those that are."""
    wanted = list(dict.fromkeys(models))
    of_provider = sa.select(keys.c.id).where(keys.c.provider_id == provider)
    of_active = of_provider.where(keys.c.active)
    retired = await conn.execute(
        sa.update(key_status)
        .where(
            key_status.c.active,
            key_status.c.model.not_in(wanted),
            key_status.c.key_id.in_(of_provider),
        )
        .values(active=False, revision=revision)
    )
    revived = await conn.execute(
        sa.update(key_status)
        .where(
            ~key_status.c.active,
            key_status.c.model.in_(wanted),
            key_status.c.key_id.in_(of_active),
        )
        .values(active=True, revision=revision, next_check_at=now)
    )
    changed = max(retired.rowcount, 0) + max(revived.rowcount, 0)
    columns = ["key_id", "model", "active", "status", "next_check_at", "revision"]
    for model in wanted:
        missing = (
            sa.select(
                keys.c.id,
                sa.literal(model, sa.Text),
                sa.literal(True, sa.Boolean),
                sa.literal(KeyStatus.UNTESTED.value, sa.Text),
                sa.literal(now, sa.Double),
                sa.literal(revision, sa.BigInteger),
            )
            .where(keys.c.provider_id == provider, keys.c.active)
            .where(
                ~sa.exists().where(key_status.c.key_id == keys.c.id, key_status.c.model == model)
            )
        )
        inserted = await conn.execute(sa.insert(key_status).from_select(columns, missing))
        changed += max(inserted.rowcount, 0)
    return changed


async def _stamp_members(conn: AsyncConnection, provider_ids: list[int], revision: int) -> None:
    """A provider turned on or off changes every row of its pool: stamp them for the delta."""
    await conn.execute(
        sa.update(key_status)
        .where(
            key_status.c.key_id.in_(
                sa.select(keys.c.id).where(keys.c.provider_id.in_(provider_ids))
            )
        )
        .values(revision=revision)
    )
    await conn.execute(
        sa.update(proxies).where(proxies.c.provider_id.in_(provider_ids)).values(revision=revision)
    )


def _batches(items: Sequence[_T]) -> list[Sequence[_T]]:
    return [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]
