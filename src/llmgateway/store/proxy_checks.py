"""The Keeper's proxy queries: claiming due proxies, writing their probe results, and the
healthy proxies of each provider (what probes and gateways route through).

A claim pushes a proxy's next check past the probe (`hold_until`), so another keeper leaves it
alone and a killed keeper's proxies come back then. A result that changes a proxy's health
takes the next revision, so gateways see it in their next delta refresh, and on PostgreSQL it
is announced (`notify`) so that they refresh at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from llmgateway.core.outcomes import KeyStatus
from llmgateway.store import Store, notify
from llmgateway.store.status import bump_revision, cut_message
from llmgateway.store.tables import providers, proxies, proxy_status

DEAD_PROXY = KeyStatus.NETWORK_ERROR
"""The status of a proxy that could not be reached (a live one is `valid`)."""


@dataclass(frozen=True, slots=True)
class ProxyCheck:
    """One claimed proxy (the URL may hold a password: it is left out of repr)."""

    proxy_id: int
    provider: str
    url: str = field(repr=False)
    status: KeyStatus


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """A proxy probe's result; `error_message` must already be masked."""

    proxy_id: int
    alive: bool
    observed_at: float
    next_check_at: float
    error_message: str | None = None


async def claim_due_proxies(
    store: Store, now: float, hold_until: float, limit: int
) -> list[ProxyCheck]:
    """Take up to `limit` due proxies, pushing their next check to `hold_until` so another
    keeper leaves them alone (and a killed keeper's proxies come back then)."""
    ps = proxy_status.c
    chosen = (
        sa.select(ps.proxy_id)
        .select_from(
            proxy_status.join(proxies, proxies.c.id == ps.proxy_id).join(
                providers, providers.c.id == proxies.c.provider_id
            )
        )
        .where(proxies.c.active, providers.c.active, ps.next_check_at <= now)
        .order_by(ps.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=proxy_status)
    )
    claim = (
        sa.update(proxy_status)
        .where(ps.proxy_id.in_(chosen))
        .values(next_check_at=hold_until)
        .returning(ps.proxy_id, ps.status)
    )
    async with store.engine.begin() as conn:
        claimed = {int(pid): str(status) for pid, status in await conn.execute(claim)}
        if not claimed:
            return []
        query = (
            sa.select(proxies.c.id, providers.c.name, proxies.c.url)
            .select_from(proxies.join(providers, providers.c.id == proxies.c.provider_id))
            .where(proxies.c.id.in_(list(claimed)))
            .order_by(proxies.c.id)
        )
        return [
            ProxyCheck(proxy_id, name, url, KeyStatus(claimed[proxy_id]))
            for proxy_id, name, url in await conn.execute(query)
        ]


async def write_proxy_results(store: Store, results: Sequence[ProxyResult]) -> None:
    """Write proxy probe results; a proxy whose health changed is stamped for gateways, and
    announced to them on PostgreSQL."""
    if not results:
        return
    ps = proxy_status.c
    new_status = sa.bindparam("p_status", type_=sa.Text)
    observed = sa.bindparam("p_observed_at", type_=sa.Double)
    async with store.engine.begin() as conn:
        revision = await bump_revision(conn)
        ids = [r.proxy_id for r in results]
        was = sa.select(ps.proxy_id, ps.status).where(ps.proxy_id.in_(ids))
        before = {int(pid): str(status) for pid, status in await conn.execute(was)}
        if any(before.get(r.proxy_id) != _status_of(r).value for r in results):
            await notify.publish(conn, notify.Kind.PROXIES, revision)
        statement = (
            sa.update(proxy_status)
            .where(ps.proxy_id == sa.bindparam("p_proxy_id", type_=sa.Integer))
            .values(
                status=new_status,
                failing_since=sa.case(
                    (new_status == KeyStatus.VALID.value, sa.null()),
                    else_=sa.func.coalesce(ps.failing_since, observed),
                ),
                next_check_at=sa.bindparam("p_next_check_at", type_=sa.Double),
                last_checked_at=observed,
                error_message=sa.bindparam("p_error_message", type_=sa.Text),
                revision=sa.case((ps.status != new_status, revision), else_=ps.revision),
            )
        )
        await conn.execute(
            statement,
            [
                {
                    "p_proxy_id": r.proxy_id,
                    "p_status": _status_of(r).value,
                    "p_observed_at": r.observed_at,
                    "p_next_check_at": r.next_check_at,
                    "p_error_message": cut_message(r.error_message),
                }
                for r in results
            ],
        )


async def next_check_at(store: Store) -> float | None:
    """When the next proxy check is due (epoch seconds), or None without a proxy to check."""
    ps = proxy_status.c
    query = (
        sa.select(sa.func.min(ps.next_check_at))
        .select_from(
            proxy_status.join(proxies, proxies.c.id == ps.proxy_id).join(
                providers, providers.c.id == proxies.c.provider_id
            )
        )
        .where(proxies.c.active, providers.c.active)
    )
    async with store.engine.connect() as conn:
        found = await conn.scalar(query)
    return None if found is None else float(found)


def _status_of(result: ProxyResult) -> KeyStatus:
    return KeyStatus.VALID if result.alive else DEAD_PROXY


async def healthy_proxies(store: Store) -> dict[str, list[str]]:
    """Each provider's usable proxy URLs (active and not found dead; untested ones count)."""
    query = (
        sa.select(providers.c.name, proxies.c.url)
        .select_from(
            proxies.join(proxy_status, proxy_status.c.proxy_id == proxies.c.id).join(
                providers, providers.c.id == proxies.c.provider_id
            )
        )
        .where(proxies.c.active, providers.c.active, proxy_status.c.status != DEAD_PROXY.value)
        .order_by(proxies.c.id)
    )
    found: dict[str, list[str]] = {}
    async with store.engine.connect() as conn:
        for name, url in await conn.execute(query):
            found.setdefault(name, []).append(url)
    return found
