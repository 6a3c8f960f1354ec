"""The Keeper's maintenance of the store: purging long-removed keys and proxies, VACUUM."""

from __future__ import annotations

import sqlalchemy as sa

from llmgateway.store import Store
from llmgateway.store.tables import key_status, key_usage, keys, proxies, proxy_status


async def purge_removed(store: Store, before: float) -> tuple[int, int]:
    """Delete keys and proxies removed from their files before `before` (their status rows go
    with them). Returns how many keys and proxies were deleted."""
    counts = []
    async with store.engine.begin() as conn:
        for table in (keys, proxies):
            if table is keys:
                # Explicitly, not by cascade: SQLite only cascades with its foreign keys on.
                gone = sa.select(keys.c.id).where(~keys.c.active, keys.c.removed_at < before)
                await conn.execute(sa.delete(key_status).where(key_status.c.key_id.in_(gone)))
                await conn.execute(sa.delete(key_usage).where(key_usage.c.key_id.in_(gone)))
            else:
                gone = sa.select(proxies.c.id).where(
                    ~proxies.c.active, proxies.c.removed_at < before
                )
                await conn.execute(sa.delete(proxy_status).where(proxy_status.c.proxy_id.in_(gone)))
            deleted = await conn.execute(
                sa.delete(table).where(~table.c.active, table.c.removed_at < before)
            )
            counts.append(max(deleted.rowcount, 0))
    return counts[0], counts[1]


async def vacuum(store: Store) -> None:
    """Reclaim space, refresh statistics: VACUUM (SQLite), VACUUM ANALYZE (PostgreSQL)."""
    async with store.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        command = "VACUUM ANALYZE" if conn.dialect.name == "postgresql" else "VACUUM"
        await auto.execute(sa.text(command))
