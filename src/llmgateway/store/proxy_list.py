"""The proxies page of the console: every active proxy of each provider with its last check
(the Keeper's proxy probes write `proxy_status`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from llmgateway.store import Store
from llmgateway.store import tables as t
from llmgateway.store.proxy_checks import DEAD_PROXY


@dataclass(frozen=True, slots=True)
class ProxyView:
    """One active proxy: its URL (may hold a password: shown only masked), alive or not (None:
    not checked yet), since when it fails, its last and next check, its last error (masked
    by the Keeper when written)."""

    proxy_id: int
    provider: str
    url: str = field(repr=False)
    alive: bool | None
    failing_since: float | None
    last_checked_at: float | None
    next_check_at: float | None
    error: str | None


MAX_PROXIES = 5000
"""The page lists at most this many proxies (a pool has tens or hundreds)."""


async def active_proxies(store: Store, limit: int = MAX_PROXIES) -> list[ProxyView]:
    """The active proxies by provider and id, at most `limit`."""
    status = t.proxy_status.c
    query = (
        sa.select(
            t.proxies.c.id,
            t.providers.c.name,
            t.proxies.c.url,
            status.status,
            status.failing_since,
            status.last_checked_at,
            status.next_check_at,
            status.error_message,
        )
        .select_from(t.proxies)
        .join(t.providers, t.providers.c.id == t.proxies.c.provider_id)
        .outerjoin(t.proxy_status, status.proxy_id == t.proxies.c.id)
        .where(t.proxies.c.active)
        .order_by(t.providers.c.name, t.proxies.c.id)
        .limit(limit)
    )
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        ProxyView(
            proxy_id=row[0],
            provider=row[1],
            url=row[2],
            alive=None if row[5] is None else row[3] != DEAD_PROXY.value,
            failing_since=row[4],
            last_checked_at=row[5],
            next_check_at=row[6],
            error=row[7],
        )
        for row in rows
    ]
