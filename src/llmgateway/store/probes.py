"""The Keeper's key queries: claiming due (key, model) checks with leases, writing probe
results, and a usable key for calls outside probing. Proxies are in `store.proxy_checks`, purging
and VACUUM in `store.maintenance`.

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
from llmgateway.records import KeyTurn
from llmgateway.store import Store, notify, turns
from llmgateway.store.status import bump_revision, cut_message
from llmgateway.store.tables import key_status, keys, providers


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


_pool = key_status.join(keys, keys.c.id == key_status.c.key_id).join(
    providers, providers.c.id == keys.c.provider_id
)


def _due(now: float) -> sa.ColumnElement[bool]:
    ks = key_status.c
    return sa.and_(
        ks.active,
        keys.c.active,
        keys.c.disabled_at.is_(None),
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
    store: Store,
    owner: str,
    now: float,
    lease_until: float,
    limit: int,
    skip: Collection[str] = (),
) -> list[DueCheck]:
    """Lease up to `limit` due rows (soonest first) to `owner` until `lease_until`, none of
    the providers named in `skip` (those a round has run out of time for).

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
        .where(_due(now), free_key, *([providers.c.name.not_in(list(skip))] if skip else []))
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
    """Write a batch of results in one transaction and release their leases; a key this takes
    out of service is logged once (`Store.turns`)."""
    if not results:
        return
    marks = [r for r in results if r.marks]
    found: list[KeyTurn] = []
    async with store.engine.begin() as conn:
        if marks:
            revision = await bump_revision(conn)
            before = await turns.statuses_of(
                conn, turns.watched([(r.key_id, r.status) for r in marks])
            )
            await conn.execute(_mark_statement(owner, revision), [_mark_params(r) for r in marks])
            found = await turns.turned(conn, before)
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
    store.turns.report(found)


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
        "p_error_message": cut_message(result.error_message),
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
        "p_error_message": cut_message(result.error_message),
    }


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
            keys.c.disabled_at.is_(None),
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
