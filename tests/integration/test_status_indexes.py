"""Migration 0014 on SQLite and PostgreSQL: the single-column index on
`key_status.next_check_at` is gone (the composite index of 0011 begins with the same column),
`ix_key_status_status` stays, a downgrade recreates the index; and on a populated table the
Keeper's due-probe claim, the backlog count and a re-check's first-in-line time still read the
composite index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from tests.helpers import ManualClock

from llmgateway.config.settings import Settings
from llmgateway.store import Store, key_actions, overview, probes
from llmgateway.store.connect import _alembic_config
from llmgateway.store.schema import SCHEMA_HEAD
from llmgateway.store.tables import key_status

SINGLE = "ix_key_status_next_check_at"
COMPOSITE = "ix_key_status_next_check_at_key_id_model"


async def key_status_indexes(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        found = await conn.run_sync(lambda sync: sa.inspect(sync).get_indexes("key_status"))
    return {str(index["name"]) for index in found}


async def test_0014_drops_the_next_check_index_and_its_downgrade_restores_it(db_url: str) -> None:
    from alembic import command

    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    async with await Store.open(db_url) as store:
        assert await store.upgrade() == SCHEMA_HEAD
        at_head = await key_status_indexes(store)
        assert SINGLE not in at_head
        assert {COMPOSITE, "ix_key_status_status", "ix_key_status_status_key_id_model"} <= at_head

        def to_0013(sync: sa.Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = sync
            command.downgrade(config, "0013")

        async with store.engine.begin() as conn:
            await conn.run_sync(to_0013)
        assert await key_status_indexes(store) == at_head | {SINGLE}
        assert await store.upgrade() == SCHEMA_HEAD
        assert await key_status_indexes(store) == at_head


def settings() -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": "/nonexistent",
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": {m: {"endpoint_suffix": "/chat/completions"} for m in ("m1", "m2")},
    }
    return Settings.model_validate({"providers": {"openai": provider}})


async def test_the_due_reads_still_use_the_composite_index(
    store: Store, clock: ManualClock
) -> None:
    secrets = [f"sk-index-{i:05d}-abcdefghijklmnop" for i in range(3000)]
    await store.sync_providers(settings().providers)
    await store.sync_keys("openai", secrets, ["m1", "m2"], False)
    async with store.engine.begin() as conn:  # one row in a hundred due, the rest spread later
        due = sa.case((key_status.c.key_id % 100 == 0, clock.now - 1), else_=clock.now + 3600)
        await conn.execute(sa.update(key_status).values(next_check_at=due))
        await conn.execute(sa.text("ANALYZE"))
    seen: list[tuple[str, Any]] = []

    def heard(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "next_check_at" in statement:
            seen.append((statement, params))

    event.listen(store.engine.sync_engine, "before_cursor_execute", heard)
    try:
        assert await probes.count_due(store, clock.now) == 60
        async with store.engine.connect() as conn:
            assert await overview.backlog(conn, clock.now) == 60
        assert await key_actions.first_in_line(store) == clock.now - 2
        assert len(await probes.claim_due(store, "keeper-a", clock.now, clock.now + 60, 50)) == 50
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", heard)
    assert len(seen) == 4
    for statement, params in seen:
        assert COMPOSITE in await plan(store, statement, params), statement


async def plan(store: Store, statement: str, params: Any) -> str:
    """The query plan of `statement`; on PostgreSQL with sequential scans priced out, so the
    plan shows an index whenever one can serve (a 6,000-row table is small to its planner)."""
    async with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = (await conn.exec_driver_sql("EXPLAIN " + statement, params)).all()
            return "\n".join(row[0] for row in rows)
        rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)).all()
        return "\n".join(str(row[-1]) for row in rows)
