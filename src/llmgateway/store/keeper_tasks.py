"""The Keeper's periodic tasks in the store: when each last ran, and a lease on the one running.

A task is due when it never ran or its last run finished `every` seconds ago. `claim` takes a
due task with one conditional UPDATE (due, and not leased by a live keeper), which is atomic on
SQLite and on PostgreSQL, through a transaction pooler too: of several keepers on one database
exactly one gets it. The winner calls `finish` (the run is recorded) or `release` (it failed:
the task stays due). A keeper killed mid-task holds it until its lease ends (`hold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from llmgateway.store import Store
from llmgateway.store.tables import insert_into, keeper_tasks

SYNC = "sync"
"""The row of the Keeper's last finished sync of the key files (`mark`ed, never claimed)."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as stored: its last finished run (None: never), and its lease if one is held."""

    name: str
    last_run_at: float | None
    lease_owner: str | None
    lease_until: float | None


async def claim(store: Store, name: str, owner: str, now: float, every: float, hold: float) -> bool:
    """Take task `name` for `owner` until `now + hold` if it is due (never run, or last run
    `every` seconds ago or more) and no other keeper's lease on it is live. True: run it."""
    kt = keeper_tasks.c
    take = (
        sa.update(keeper_tasks)
        .where(
            kt.name == name,
            sa.or_(kt.last_run_at.is_(None), kt.last_run_at <= now - every),
            sa.or_(kt.lease_until.is_(None), kt.lease_until <= now),
        )
        .values(lease_owner=owner, lease_until=now + hold)
        .returning(kt.name)
    )
    async with store.engine.begin() as conn:
        await conn.execute(
            insert_into(conn, keeper_tasks).values(name=name).on_conflict_do_nothing()
        )
        return (await conn.execute(take)).first() is not None


async def finish(store: Store, name: str, owner: str, now: float) -> None:
    """Record that `owner` ran task `name`, finishing at `now`, and end its lease."""
    await _end(store, name, owner, {"last_run_at": now})


async def release(store: Store, name: str, owner: str) -> None:
    """End `owner`'s lease on task `name` without recording a run (it stays due)."""
    await _end(store, name, owner, {})


async def mark(store: Store, name: str, now: float) -> None:
    """Record that a step the Keeper runs on its own schedule (`sync`) finished at `now`, with
    no lease: the console shows when it last ran."""
    async with store.engine.begin() as conn:
        statement = insert_into(conn, keeper_tasks).values(name=name, last_run_at=now)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[keeper_tasks.c.name], set_={"last_run_at": now}
            )
        )


async def read(store: Store) -> dict[str, TaskRow]:
    """Every task row, by name."""
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.select(keeper_tasks))
        return {row.name: TaskRow(**row._mapping) for row in result}


async def _end(store: Store, name: str, owner: str, values: dict[str, float]) -> None:
    kt = keeper_tasks.c
    statement = (
        sa.update(keeper_tasks)
        .where(kt.name == name, kt.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, **values)
    )
    async with store.engine.begin() as conn:
        await conn.execute(statement)
