"""Queries of the `breakers` table: the circuit-breaker state gateways report, manual resets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.store.tables import breakers, insert_into


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One provider's breaker as last reported: `state` 0 closed, 1 half-open, 2 open;
    `open_egresses` how many of its egress breakers were not closed; `changed_at` when the
    stored (state, open egresses) last changed (None: no gateway reported one yet; a gateway
    reports only a change, so no time of the last report is kept); `reset_at` when
    `llmgateway breaker reset` last asked for a reset (None: never)."""

    provider: str
    state: int
    open_egresses: int
    changed_at: float | None
    reset_at: float | None


async def read(conn: AsyncConnection) -> list[BreakerRow]:
    """Every provider's row, by name."""
    columns = breakers.c
    query = sa.select(
        columns.provider,
        columns.state,
        columns.open_egresses,
        columns.updated_at.label("changed_at"),
        columns.reset_at,
    ).order_by(columns.provider)
    return [BreakerRow(**row._mapping) for row in await conn.execute(query)]


async def save(conn: AsyncConnection, states: Mapping[str, tuple[int, int]], now: float) -> None:
    """Upsert each provider's (state, open egresses), leaving its reset request alone. The
    change time moves only when the values differ from the stored ones: a gateway that starts
    and reports the state already stored (or two gateways in the same state) leaves it."""
    for provider, (state, open_egresses) in states.items():
        values = {"state": state, "open_egresses": open_egresses, "updated_at": now}
        insert = insert_into(conn, breakers).values(provider=provider, **values)
        moved = sa.or_(
            breakers.c.updated_at.is_(None),
            breakers.c.state != insert.excluded.state,
            breakers.c.open_egresses != insert.excluded.open_egresses,
        )
        changes = {
            "state": state,
            "open_egresses": open_egresses,
            "updated_at": sa.case((moved, insert.excluded.updated_at), else_=breakers.c.updated_at),
        }
        await conn.execute(insert.on_conflict_do_update(index_elements=["provider"], set_=changes))


async def request_reset(conn: AsyncConnection, provider: str, now: float) -> None:
    """Ask every gateway to close `provider`'s breakers at its next refresh."""
    insert = insert_into(conn, breakers).values(provider=provider, reset_at=now)
    await conn.execute(
        insert.on_conflict_do_update(index_elements=["provider"], set_={"reset_at": now})
    )
