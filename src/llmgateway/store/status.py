"""Reading the pool (snapshot, delta, counts) and writing status events back."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.outcomes import ALL_MODELS, KeyStatus
from llmgateway.store.records import KeyRow, ProxyRow, Snapshot, StatusCount, StatusEvent
from llmgateway.store.tables import key_status, keys, meta, providers, proxies, proxy_status

ERROR_MESSAGE_LIMIT = 500
"""Stored error messages are cut to this many characters."""

SHARED_MODEL_LABEL = "shared"
"""How `ALL_MODELS` is shown to people (status table, metrics)."""


async def bump_revision(conn: AsyncConnection) -> int:
    """Take the next global revision. On PostgreSQL the row lock also serializes writers until
    commit, so commit order equals revision order and a delta reader never skips a change."""
    stmt = (
        sa.update(meta)
        .where(meta.c.id == 1)
        .values(revision=meta.c.revision + 1)
        .returning(meta.c.revision)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def read_revision(conn: AsyncConnection) -> int:
    """The current global revision."""
    return int(await conn.scalar(sa.select(meta.c.revision).where(meta.c.id == 1)) or 0)


async def snapshot(
    conn: AsyncConnection, since_revision: int, key_range: tuple[int, int] | None = None
) -> Snapshot:
    """Every active row (`since_revision=0`), or every row stamped after `since_revision`,
    inactive ones included; only keys with `lo < key_id <= hi` given `key_range`. The revision
    is read first: a row committed in between shows up again in the next delta, which is
    harmless, instead of being missed."""
    revision = await read_revision(conn)
    key_query = sa.select(
        key_status.c.key_id,
        providers.c.name,
        keys.c.value,
        key_status.c.model,
        key_status.c.status,
        key_status.c.cooldown_until,
        key_status.c.active,
        keys.c.active,
        providers.c.active,
    ).select_from(
        key_status.join(keys, keys.c.id == key_status.c.key_id).join(
            providers, providers.c.id == keys.c.provider_id
        )
    )
    proxy_query = sa.select(
        proxies.c.id,
        providers.c.name,
        proxies.c.url,
        proxy_status.c.status,
        proxies.c.active,
        providers.c.active,
    ).select_from(
        proxies.join(proxy_status, proxy_status.c.proxy_id == proxies.c.id).join(
            providers, providers.c.id == proxies.c.provider_id
        )
    )
    if since_revision <= 0:
        key_query = key_query.where(key_status.c.active, keys.c.active, providers.c.active)
        proxy_query = proxy_query.where(proxies.c.active, providers.c.active)
    else:
        key_query = key_query.where(key_status.c.revision > since_revision)
        proxy_query = proxy_query.where(
            sa.or_(proxies.c.revision > since_revision, proxy_status.c.revision > since_revision)
        )
    if key_range is not None:
        key_query = key_query.where(
            key_status.c.key_id > key_range[0], key_status.c.key_id <= key_range[1]
        )
    names: dict[str, str] = {}  # one string per provider and model name, not one per row
    key_rows = [
        KeyRow(
            key_id=key_id,
            provider=names.setdefault(provider, provider),
            secret=secret,
            model=names.setdefault(model, model),
            status=KeyStatus(status),
            cooldown_until=cooldown_until,
            active=bool(status_active and key_active and provider_active),
        )
        for (
            key_id,
            provider,
            secret,
            model,
            status,
            cooldown_until,
            status_active,
            key_active,
            provider_active,
        ) in await conn.execute(key_query)
    ]
    proxy_rows = [
        ProxyRow(
            proxy_id=proxy_id,
            provider=provider,
            url=url,
            status=KeyStatus(status),
            active=bool(proxy_active and provider_active),
        )
        for proxy_id, provider, url, status, proxy_active, provider_active in await conn.execute(
            proxy_query
        )
    ]
    return Snapshot(revision=revision, keys=key_rows, proxies=proxy_rows)


async def max_key_id(conn: AsyncConnection) -> int:
    """The highest key id in the store (0 when it has none)."""
    return int(await conn.scalar(sa.select(sa.func.max(keys.c.id))) or 0)


async def apply_events(conn: AsyncConnection, events: Sequence[StatusEvent], revision: int) -> None:
    """Write `events` in observation order, each guarded so that it only lands on a row last
    checked before it was observed (which also makes a repeated event a no-op)."""
    if not events:
        return
    row = key_status.c
    observed = sa.bindparam("p_observed_at", type_=sa.Double)
    cooldown = sa.bindparam("p_cooldown_until", type_=sa.Double)
    stmt = (
        sa.update(key_status)
        .where(
            row.key_id == sa.bindparam("p_key_id", type_=sa.Integer),
            # a dead key (invalid_key, no_access) is dead for every model it serves
            sa.or_(
                row.model == sa.bindparam("p_model", type_=sa.Text),
                sa.bindparam("p_key_level", type_=sa.Boolean),
            ),
            sa.or_(row.last_checked_at.is_(None), row.last_checked_at < observed),
        )
        .values(
            status=sa.bindparam("p_status", type_=sa.Text),
            reason=sa.bindparam("p_reason", type_=sa.Text),
            status_code=sa.bindparam("p_status_code", type_=sa.Integer),
            error_message=sa.bindparam("p_error_message", type_=sa.Text),
            latency_ms=sa.bindparam("p_latency_ms", type_=sa.Double),
            last_checked_at=observed,
            cooldown_until=sa.case(
                (cooldown.is_(None), row.cooldown_until),
                (row.cooldown_until.is_(None), cooldown),
                (cooldown > row.cooldown_until, cooldown),
                else_=row.cooldown_until,
            ),
            failing_since=sa.case(
                (sa.bindparam("p_healthy", type_=sa.Boolean), sa.null()),
                else_=sa.func.coalesce(row.failing_since, observed),
            ),
            next_check_at=sa.func.coalesce(
                sa.bindparam("p_next_check_at", type_=sa.Double), row.next_check_at
            ),
            revision=revision,
        )
    )
    ordered = sorted(events, key=lambda e: e.observed_at)
    await conn.execute(stmt, [_event_params(e) for e in ordered])


_KEY_LEVEL = frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS})


def _event_params(event: StatusEvent) -> dict[str, object]:
    message = event.error_message
    return {
        "p_key_id": event.key_id,
        "p_model": event.model,
        "p_observed_at": event.observed_at,
        "p_cooldown_until": event.cooldown_until,
        "p_status": KeyStatus(event.status).value,
        "p_reason": event.reason.value if event.reason is not None else None,
        "p_status_code": event.status_code,
        "p_error_message": message[:ERROR_MESSAGE_LIMIT] if message is not None else None,
        "p_latency_ms": event.latency_ms,
        "p_healthy": event.status == KeyStatus.VALID,
        "p_key_level": event.status in _KEY_LEVEL,
        "p_next_check_at": event.next_check_at,
    }


async def status_counts(conn: AsyncConnection) -> list[StatusCount]:
    """Active (key, model) rows per provider, model and status, with the soonest next check."""
    query = (
        sa.select(
            providers.c.name,
            key_status.c.model,
            key_status.c.status,
            sa.func.count(),
            sa.func.min(key_status.c.next_check_at),
        )
        .select_from(
            key_status.join(keys, keys.c.id == key_status.c.key_id).join(
                providers, providers.c.id == keys.c.provider_id
            )
        )
        .where(key_status.c.active, keys.c.active, providers.c.active)
        .group_by(providers.c.name, key_status.c.model, key_status.c.status)
        .order_by(providers.c.name, key_status.c.model, key_status.c.status)
    )
    return [
        StatusCount(
            provider=provider,
            model=SHARED_MODEL_LABEL if model == ALL_MODELS else model,
            status=status,
            count=int(count),
            next_check_at=next_check_at,
        )
        for provider, model, status, count, next_check_at in await conn.execute(query)
    ]
