"""Queries of the `breakers` table: the circuit-breaker state gateways report, manual resets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.store.tables import breakers


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One provider's breaker as last reported: `state` 0 closed, 1 half-open, 2 open;
    `open_egresses` how many of its egress breakers were not closed; `reset_at` when
    `llmgateway breaker reset` last asked for a reset (None: never)."""

    provider: str
    state: int
    open_egresses: int
    updated_at: float | None
    reset_at: float | None


async def read(conn: AsyncConnection) -> list[BreakerRow]:
    """Every provider's row, by name."""
    result = await conn.execute(sa.select(breakers).order_by(breakers.c.provider))
    return [BreakerRow(**row._mapping) for row in result]


async def save(conn: AsyncConnection, states: Mapping[str, tuple[int, int]], now: float) -> None:
    """Upsert each provider's (state, open egresses), leaving its reset request alone."""
    for provider, (state, open_egresses) in states.items():
        values = {"state": state, "open_egresses": open_egresses, "updated_at": now}
        insert = _insert(conn).values(provider=provider, **values)
        await conn.execute(insert.on_conflict_do_update(index_elements=["provider"], set_=values))


async def request_reset(conn: AsyncConnection, provider: str, now: float) -> None:
    """Ask every gateway to close `provider`'s breakers at its next refresh."""
    insert = _insert(conn).values(provider=provider, reset_at=now)
    await conn.execute(
        insert.on_conflict_do_update(index_elements=["provider"], set_={"reset_at": now})
    )


def _insert(conn: AsyncConnection) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(breakers)
    return sqlite.insert(breakers)
