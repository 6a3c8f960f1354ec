"""Which keys a status write takes out of service: read in the write's own transaction.

A write of `invalid_key`, `no_access` or `no_quota` may find the row already so (a second
gateway, or the Keeper confirming the gateway's finding): only a real change is a turn, logged
once by the process that made it (`llmgateway.observe.key_turns`). Both writers take the global
revision first, which serializes them, so the statuses read before and after the update in the
same transaction are exactly what this write changed. Only rows of keys that get such a status
are read: a batch without one costs nothing more.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import KeyTurn
from llmgateway.store.tables import key_status, keys, providers

OUT_OF_SERVICE = frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS, KeyStatus.NO_QUOTA})
"""Statuses whose arrival is logged (at WARNING, once per change)."""

Before = Mapping[tuple[int, str], str]


def watched(statuses: Collection[tuple[int, KeyStatus | str]]) -> set[int]:
    """The key ids among (key id, status written) whose status takes them out of service."""
    return {key_id for key_id, status in statuses if status in OUT_OF_SERVICE}


async def statuses_of(conn: AsyncConnection, key_ids: Collection[int]) -> Before:
    """The stored status of every row of `key_ids`, by (key id, model)."""
    if not key_ids:
        return {}
    ks = key_status.c
    query = sa.select(ks.key_id, ks.model, ks.status).where(ks.key_id.in_(sorted(key_ids)))
    return {(key_id, model): status for key_id, model, status in await conn.execute(query)}


async def turned(conn: AsyncConnection, before: Before) -> list[KeyTurn]:
    """The keys of `before` whose active rows now have an out-of-service status they did not
    have before: one turn per key and status, in key order."""
    if not before:
        return []
    ks = key_status.c
    query = (
        sa.select(
            ks.key_id,
            ks.model,
            ks.status,
            ks.status_code,
            providers.c.name,
            keys.c.value,
            keys.c.source,
        )
        .select_from(
            key_status.join(keys, keys.c.id == ks.key_id).join(
                providers, providers.c.id == keys.c.provider_id
            )
        )
        .where(ks.key_id.in_(sorted({key_id for key_id, _ in before})), ks.active)
        .where(ks.status.in_([s.value for s in OUT_OF_SERVICE]))
        .order_by(ks.key_id, ks.model)
    )
    found: dict[tuple[int, str], KeyTurn] = {}
    for key_id, model, status, code, provider, secret, source in await conn.execute(query):
        if before.get((key_id, model)) == status:
            continue
        label = "shared" if model == ALL_MODELS else model
        slot = (key_id, status)
        turn = found.get(slot)
        if turn is None:
            found[slot] = KeyTurn(
                provider=provider,
                masked=mask(secret),
                fingerprint=fingerprint(secret),
                source=source,
                status=status,
                models=(label,),
                status_code=code,
            )
        else:
            found[slot] = replace(turn, models=(*turn.models, label))
    return list(found.values())
