"""Queries of `provider_models`: the upstream's model names as the Keeper last fetched them.

One row per provider, its names one JSON array in a text column (both dialects alike), rather
than one row per name: a fetch replaces the whole list, so one row makes it one small write
(not thousands of inserts and deletes every sync interval, leaving dead rows on PostgreSQL),
and a gateway reads it back whole, the only way it is ever read (nothing looks up one name).
At most `MAX_NAMES` names of at most 256 characters: a few hundred KB at worst.

`revision` is the store revision of the last change of the names: a fetch that found the same
names moves only `fetched_at`. A gateway checks the (provider, revision) pairs at each refresh,
one small query, and reads the names of a provider only when its revision moved.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.store.tables import insert_into, provider_models, providers

MAX_NAMES = 10_000
"""The most names kept per provider (the Keeper cuts a longer list)."""

_joined = provider_models.join(providers, providers.c.id == provider_models.c.provider_id)


async def names_of(conn: AsyncConnection, provider_id: int) -> list[str] | None:
    """The names stored for a provider, or None when none were ever stored."""
    query = sa.select(provider_models.c.names).where(provider_models.c.provider_id == provider_id)
    stored = await conn.scalar(query)
    return None if stored is None else _decode(stored)


async def save(
    conn: AsyncConnection, provider_id: int, names: Sequence[str], revision: int, now: float
) -> None:
    """Store a provider's names, stamped with `revision` (insert or replace)."""
    values = {"names": orjson.dumps(list(names)).decode(), "fetched_at": now, "revision": revision}
    insert = insert_into(conn, provider_models).values(provider_id=provider_id, **values)
    await conn.execute(insert.on_conflict_do_update(index_elements=["provider_id"], set_=values))


async def touch(conn: AsyncConnection, provider_id: int, now: float) -> None:
    """Record a fetch that found the names already stored (their revision stays)."""
    await conn.execute(
        sa.update(provider_models)
        .where(provider_models.c.provider_id == provider_id)
        .values(fetched_at=now)
    )


async def revisions(conn: AsyncConnection) -> dict[str, int]:
    """The revision of each provider's stored names, by provider name."""
    query = sa.select(providers.c.name, provider_models.c.revision).select_from(_joined)
    return {name: int(revision) for name, revision in await conn.execute(query)}


async def names_by_provider(
    conn: AsyncConnection, wanted: Collection[str]
) -> dict[str, tuple[int, list[str]]]:
    """The (revision, names) of each provider in `wanted` that has names stored."""
    if not wanted:
        return {}
    query = (
        sa.select(providers.c.name, provider_models.c.revision, provider_models.c.names)
        .select_from(_joined)
        .where(providers.c.name.in_(list(wanted)))
    )
    return {
        name: (int(revision), _decode(names)) for name, revision, names in await conn.execute(query)
    }


def _decode(stored: str) -> list[str]:
    """The names in a stored JSON array (anything else in it is dropped)."""
    try:
        found = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(found, list):
        return []
    return [name for name in found[:MAX_NAMES] if isinstance(name, str)]
