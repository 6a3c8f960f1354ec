"""The Keeper's queries: claiming due checks with leases, writing probe results, proxy health,
and maintenance (purging long-removed rows, VACUUM).

Claims are one statement, `UPDATE … WHERE (key_id, model) IN (SELECT … FOR UPDATE SKIP LOCKED
LIMIT n) RETURNING …`: on PostgreSQL several keepers never claim the same row, and a killed
keeper's rows come back once `lease_until` passes. SQLite has no row locks (it drops the FOR
UPDATE); one keeper per SQLite database is enforced by `llmgateway.store.locks`.

Results that change a key's status take the next revision and stamp their rows, so gateways see
them in their next delta refresh. A result is dropped when another keeper took the row over, or
when the gateway recorded something newer meanwhile.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import ErrorReason, KeyStatus
from llmgateway.store import Store, notify
from llmgateway.store.status import ERROR_MESSAGE_LIMIT, bump_revision
from llmgateway.store.tables import key_status, keys, providers, proxies, proxy_status

DEAD_PROXY = KeyStatus.NETWORK_ERROR
"""The status of a proxy that could not be reached (a live one is `valid`)."""


@dataclass(frozen=True, slots=True)
class DueCheck:
    """One claimed (key, model) row: its state when claimed (`next_check_at` is when it was
    scheduled) and the key itself."""

    key_id: int
    provider: str
    secret: str = field(repr=False)
    model: str
    status: KeyStatus
    failing_since: float | None
    next_check_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe decided for one (key, model). With `marks` the status is written (and
    stamped for gateways); without, only the schedule, attempts and diagnostics.
    `error_message` must already be masked."""

    key_id: int
    model: str
    observed_at: float
    marks: bool
    status: KeyStatus
    reason: ErrorReason | None
    failing_since: float | None
    next_check_at: float
    attempts: int
    cooldown_until: float | None = None
    status_code: int | None = None
    latency_ms: float | None = None
    error_message: str | None = None


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


_pool = key_status.join(keys, keys.c.id == key_status.c.key_id).join(
    providers, providers.c.id == keys.c.provider_id
)


def _due(now: float) -> sa.ColumnElement[bool]:
    ks = key_status.c
    return sa.and_(
        ks.active,
        keys.c.active,
        providers.c.active,
        ks.next_check_at <= now,
        sa.or_(ks.lease_until.is_(None), ks.lease_until < now),
    )


async def count_due(store: Store, now: float) -> int:
    """How many active (key, model) rows are due and not leased at `now`."""
    async with store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(_pool).where(_due(now))
        return int(await conn.scalar(query) or 0)


async def claim_due(
    store: Store, owner: str, now: float, lease_until: float, limit: int
) -> list[DueCheck]:
    """Lease up to `limit` due rows (soonest first) to `owner` until `lease_until`.

    A key is probed by one keeper at a time, whatever its models: the claim leases the key
    itself too (`keys.lease_*`), and rows of a key another keeper holds are not taken. On
    PostgreSQL both rows are locked `FOR UPDATE SKIP LOCKED`, so a row or key another keeper
    has just leased is re-checked against its new lease and skipped.
    """
    ks = key_status.c
    free_key = sa.or_(
        keys.c.lease_until.is_(None), keys.c.lease_until < now, keys.c.lease_owner == owner
    )
    chosen = (
        sa.select(ks.key_id, ks.model)
        .select_from(_pool)
        .where(_due(now), free_key)
        .order_by(ks.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=[key_status, keys])
    )
    claim = (
        sa.update(key_status)
        .where(sa.tuple_(ks.key_id, ks.model).in_(chosen))
        .values(lease_owner=owner, lease_until=lease_until)
        .returning(
            ks.key_id, ks.model, ks.status, ks.failing_since, ks.next_check_at, ks.probe_attempts
        )
    )
    async with store.engine.begin() as conn:
        claimed = (await conn.execute(claim)).all()
        key_ids = {row[0] for row in claimed}
        if key_ids:
            await conn.execute(
                sa.update(keys)
                .where(keys.c.id.in_(key_ids))
                .values(lease_owner=owner, lease_until=lease_until)
            )
        names = await _key_names(conn, key_ids)
    checks = [
        DueCheck(
            key_id=key_id,
            provider=names[key_id][0],
            secret=names[key_id][1],
            model=model,
            status=KeyStatus(status),
            failing_since=failing_since,
            next_check_at=next_check_at,
            attempts=attempts,
        )
        for key_id, model, status, failing_since, next_check_at, attempts in claimed
    ]
    return sorted(checks, key=lambda c: (c.next_check_at, c.key_id, c.model))


async def _key_names(conn: AsyncConnection, key_ids: Collection[int]) -> dict[int, tuple[str, str]]:
    if not key_ids:
        return {}
    query = (
        sa.select(keys.c.id, providers.c.name, keys.c.value)
        .select_from(keys.join(providers, providers.c.id == keys.c.provider_id))
        .where(keys.c.id.in_(list(key_ids)))
    )
    return {key_id: (name, value) for key_id, name, value in await conn.execute(query)}


async def write_results(store: Store, owner: str, results: Sequence[ProbeResult]) -> None:
    """Write a batch of results in one transaction and release their leases."""
    if not results:
        return
    marks = [r for r in results if r.marks]
    async with store.engine.begin() as conn:
        if marks:
            revision = await bump_revision(conn)
            await conn.execute(_mark_statement(owner, revision), [_mark_params(r) for r in marks])
            await notify.publish(conn, notify.Kind.PROBES, revision)
        rest = [r for r in results if not r.marks]
        if rest:
            await conn.execute(_reschedule_statement(owner), [_reschedule_params(r) for r in rest])
        pairs = [(r.key_id, r.model) for r in results]
        ks = key_status.c
        await conn.execute(
            sa.update(key_status)
            .where(ks.lease_owner == owner, sa.tuple_(ks.key_id, ks.model).in_(pairs))
            .values(lease_owner=None, lease_until=None)
        )


def _mine(owner: str) -> sa.ColumnElement[bool]:
    ks = key_status.c
    return sa.and_(
        ks.key_id == sa.bindparam("p_key_id", type_=sa.Integer),
        ks.model == sa.bindparam("p_model", type_=sa.Text),
        ks.lease_owner == owner,
    )


def _mark_statement(owner: str, revision: int) -> sa.Update:
    ks = key_status.c
    observed = sa.bindparam("p_observed_at", type_=sa.Double)
    cooldown = sa.bindparam("p_cooldown_until", type_=sa.Double)
    healthy = sa.bindparam("p_healthy", type_=sa.Boolean)
    return (
        sa.update(key_status)
        .where(_mine(owner), sa.or_(ks.last_checked_at.is_(None), ks.last_checked_at < observed))
        .values(
            status=sa.bindparam("p_status", type_=sa.Text),
            reason=sa.bindparam("p_reason", type_=sa.Text),
            failing_since=sa.bindparam("p_failing_since", type_=sa.Double),
            next_check_at=sa.bindparam("p_next_check_at", type_=sa.Double),
            probe_attempts=sa.bindparam("p_attempts", type_=sa.Integer),
            status_code=sa.bindparam("p_status_code", type_=sa.Integer),
            latency_ms=sa.bindparam("p_latency_ms", type_=sa.Double),
            error_message=sa.bindparam("p_error_message", type_=sa.Text),
            last_checked_at=observed,
            # A key proven healthy is usable at once; a deadline otherwise only moves later.
            cooldown_until=sa.case(
                (healthy, sa.null()),
                (cooldown.is_(None), ks.cooldown_until),
                (ks.cooldown_until.is_(None), cooldown),
                (cooldown > ks.cooldown_until, cooldown),
                else_=ks.cooldown_until,
            ),
            revision=revision,
            lease_owner=None,
            lease_until=None,
        )
    )


def _mark_params(result: ProbeResult) -> dict[str, object]:
    return {
        "p_key_id": result.key_id,
        "p_model": result.model,
        "p_observed_at": result.observed_at,
        "p_cooldown_until": result.cooldown_until,
        "p_healthy": result.status is KeyStatus.VALID,
        "p_status": KeyStatus(result.status).value,
        "p_reason": result.reason.value if result.reason is not None else None,
        "p_failing_since": result.failing_since,
        "p_next_check_at": result.next_check_at,
        "p_attempts": result.attempts,
        "p_status_code": result.status_code,
        "p_latency_ms": result.latency_ms,
        "p_error_message": _cut(result.error_message),
    }


def _reschedule_statement(owner: str) -> sa.Update:
    return (
        sa.update(key_status)
        .where(_mine(owner))
        .values(
            next_check_at=sa.bindparam("p_next_check_at", type_=sa.Double),
            probe_attempts=sa.bindparam("p_attempts", type_=sa.Integer),
            error_message=sa.bindparam("p_error_message", type_=sa.Text),
            lease_owner=None,
            lease_until=None,
        )
    )


def _reschedule_params(result: ProbeResult) -> dict[str, object]:
    return {
        "p_key_id": result.key_id,
        "p_model": result.model,
        "p_next_check_at": result.next_check_at,
        "p_attempts": result.attempts,
        "p_error_message": _cut(result.error_message),
    }


def _cut(message: str | None) -> str | None:
    return None if message is None else message[:ERROR_MESSAGE_LIMIT]


async def release_leases(store: Store, owner: str) -> int:
    """Give back every row `owner` still holds (they stay due as they were)."""
    ks = key_status.c
    async with store.engine.begin() as conn:
        released = await conn.execute(
            sa.update(key_status)
            .where(ks.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
        await conn.execute(
            sa.update(keys)
            .where(keys.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
        return max(released.rowcount, 0)


# --- proxies -----------------------------------------------------------------------------------


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
    """Write proxy probe results; a proxy whose health changed is stamped for gateways."""
    if not results:
        return
    ps = proxy_status.c
    new_status = sa.bindparam("p_status", type_=sa.Text)
    observed = sa.bindparam("p_observed_at", type_=sa.Double)
    async with store.engine.begin() as conn:
        revision = await bump_revision(conn)
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
                    "p_status": (KeyStatus.VALID if r.alive else DEAD_PROXY).value,
                    "p_observed_at": r.observed_at,
                    "p_next_check_at": r.next_check_at,
                    "p_error_message": _cut(r.error_message),
                }
                for r in results
            ],
        )


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


# --- a key for other calls ---------------------------------------------------------------------

_FOUND_BAD = (KeyStatus.INVALID_KEY.value, KeyStatus.NO_ACCESS.value)


async def usable_key(store: Store, provider: str) -> str | None:
    """A key of `provider` for a call outside probing (the models list): one proven `valid`
    for some model, else an `untested` one, lowest id first; never a key found invalid or
    without access for any model. None when the provider has no such key."""
    ks = key_status.c
    other = key_status.alias("other_status")
    found_bad = (
        sa.select(other.c.key_id)
        .where(other.c.key_id == keys.c.id, other.c.active, other.c.status.in_(_FOUND_BAD))
        .exists()
    )
    query = (
        sa.select(keys.c.value)
        .select_from(_pool)
        .where(
            providers.c.name == provider,
            providers.c.active,
            keys.c.active,
            ks.active,
            ks.status.in_((KeyStatus.VALID.value, KeyStatus.UNTESTED.value)),
            ~found_bad,
        )
        .order_by(sa.case((ks.status == KeyStatus.VALID.value, 0), else_=1), keys.c.id)
        .limit(1)
    )
    async with store.engine.connect() as conn:
        value = await conn.scalar(query)
    return None if value is None else str(value)


# --- maintenance -------------------------------------------------------------------------------


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
