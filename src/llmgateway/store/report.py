"""The proxies part of `llmgateway status`: active proxies per provider, alive or dead (the
CLI renders them with `llmgateway.cli.render.proxy_table`)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from llmgateway.store import Store
from llmgateway.store import tables as t
from llmgateway.store.proxy_checks import DEAD_PROXY


@dataclass(frozen=True, slots=True)
class ProxyCount:
    """A provider's active proxies: how many answer, how many do not."""

    provider: str
    alive: int
    dead: int


async def proxy_counts(store: Store) -> list[ProxyCount]:
    """Active proxies per provider (providers without proxies are left out)."""
    dead = sa.case((t.proxy_status.c.status == DEAD_PROXY.value, 1), else_=0)
    query = (
        sa.select(t.providers.c.name, sa.func.count(), sa.func.sum(dead))
        .select_from(t.proxies)
        .join(t.providers, t.providers.c.id == t.proxies.c.provider_id)
        .outerjoin(t.proxy_status, t.proxy_status.c.proxy_id == t.proxies.c.id)
        .where(t.proxies.c.active)
        .group_by(t.providers.c.name)
        .order_by(t.providers.c.name)
    )
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [ProxyCount(name, total - int(down or 0), int(down or 0)) for name, total, down in rows]
