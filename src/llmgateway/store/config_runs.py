"""Reload requests and the config each process runs: `llmgateway reload` writes a request
(with the hash of the config file it read) and announces it; every gateway and keeper re-reads
its own config file when it sees a request newer than the last it acted on, and reports the
hash of the file it runs, which `llmgateway status` shows."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llmgateway.store.notify import Kind, publish
from llmgateway.store.tables import config_reloads, config_runs, insert_into

SHOWN_FOR_SEC = 180.0
"""`llmgateway status` shows the processes whose row was renewed this recently."""


@dataclass(frozen=True, slots=True)
class ConfigRun:
    """One process's row: who it is, the config it runs and how its last reload went."""

    process: str
    role: str
    config_hash: str
    outcome: str
    updated_at: float


async def request_reload(engine: AsyncEngine, config_hash: str, now: float) -> int:
    """Store a reload request and announce it (at commit, on PostgreSQL); returns its id."""
    async with engine.begin() as conn:
        stmt = sa.insert(config_reloads).values(config_hash=config_hash, requested_at=now)
        request_id = int((await conn.execute(stmt.returning(config_reloads.c.id))).scalar_one())
        await publish(conn, Kind.CONFIG, 0, str(request_id))
    return request_id


async def latest_request(engine: AsyncEngine) -> tuple[int, str] | None:
    """The newest reload request as (id, config hash), or None when there is none."""
    query = (
        sa.select(config_reloads.c.id, config_reloads.c.config_hash)
        .order_by(config_reloads.c.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return None if row is None else (int(row.id), str(row.config_hash))


async def report_run(engine: AsyncEngine, run: ConfigRun) -> None:
    """Write (or renew) the process's row."""
    values = {
        "process": run.process,
        "role": run.role,
        "config_hash": run.config_hash,
        "outcome": run.outcome,
        "updated_at": run.updated_at,
    }
    async with engine.begin() as conn:
        stmt = insert_into(conn, config_runs).values(**values)
        fresh = {name: stmt.excluded[name] for name in values if name != "process"}
        await conn.execute(stmt.on_conflict_do_update(index_elements=["process"], set_=fresh))


async def recent_runs(engine: AsyncEngine, since: float) -> list[ConfigRun]:
    """The rows renewed at or after `since`, by role and process."""
    table = config_runs.c
    query = (
        sa.select(table.process, table.role, table.config_hash, table.outcome, table.updated_at)
        .where(table.updated_at >= since)
        .order_by(table.role, table.process)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [ConfigRun(r.process, r.role, r.config_hash, r.outcome, r.updated_at) for r in rows]
