"""Copying the original llmGateway's rows, renamed by `original.prepare`, into our tables.

Set-based statements inside the migration's transaction, stamped with one new revision (so a
gateway's delta sees them like any write). Kept per (key, model) row, or per key under the
shared marker `__ALL_MODELS__` (the same marker here): the status, `failing_since`, the next
check, the last check, status code, latency and error. Times go from `timestamptz` to epoch
seconds. Key ids are kept. The original's gateway served only `valid` keys; here a
`rate_limited` row keeps its cooldown until its next check (`cooldown_until`), so it is not
served sooner, as `invalid_key`/`no_access` (out of every scope) and `no_quota`/`no_model`
(blocked until the store lifts them) are not. No notice is sent: none of our processes runs
on the database yet.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import KeyStatus
from llmgateway.store.original import (
    PREFIX,
    Adoption,
    OriginalDatabaseError,
    ProviderImport,
    Report,
    sql,
)
from llmgateway.store.status import ERROR_MESSAGE_LIMIT, bump_revision
from llmgateway.store.tables import key_status, keys, providers, suffix_of

UNKNOWN_TYPE = "unknown"
"""The type given to a provider the config no longer has (imported inactive; the config's type
replaces it if the provider comes back)."""

_their_providers = sa.table(PREFIX + "providers", sa.column("id"), sa.column("name"))
_their_keys = sa.table(
    PREFIX + "api_keys", sa.column("id"), sa.column("provider_id"), sa.column("key_value")
)
_their_status = sa.table(
    PREFIX + "key_model_status",
    *(
        sa.column(name)
        for name in (
            "key_id",
            "model_name",
            "status",
            "failing_since",
            "last_checked",
            "next_check_time",
            "status_code",
            "response_time",
            "error_message",
        )
    ),
)
_KNOWN = [status.value for status in KeyStatus]
_CLEAN = (KeyStatus.VALID.value, KeyStatus.UNTESTED.value)


async def copy(conn: AsyncConnection, adoption: Adoption, report: Report, now: float) -> Report:
    """Import the renamed tables into ours (just created by the migrations); returns `report`
    completed with the counts and the SQL to drop or restore. Raises `OriginalDatabaseError`
    (the caller's transaction then rolls everything back) when a row cannot be imported."""
    revision = await bump_revision(conn)
    try:
        await _copy_providers(conn, adoption, revision, now)
        await _copy_keys(conn, revision, now)
        unknown = await _copy_status(conn, revision, now)
    except DBAPIError as exc:
        cause = str(exc.orig).splitlines()[0][:200]  # the first line: DETAIL would show a key
        raise OriginalDatabaseError(
            f"importing the original llmGateway's rows failed ({type(exc.orig).__name__}: "
            f"{cause}); nothing was changed: its tables keep their names and rows"
        ) from None
    drop, restore = await sql(conn, report.schema)
    return dataclasses.replace(
        report,
        providers=await _counts(conn, adoption, now),
        unknown_statuses=unknown,
        drop_sql=drop,
        restore_sql=restore,
    )


async def _copy_providers(
    conn: AsyncConnection, adoption: Adoption, revision: int, now: float
) -> None:
    names = (await conn.execute(sa.select(_their_providers.c.name))).scalars().all()
    rows = []
    for name in names:
        kind, enabled = adoption.providers.get(name, (UNKNOWN_TYPE, False))
        rows.append(
            {
                "name": name,
                "provider_type": kind,
                "active": enabled,
                "created_at": now,
                "updated_at": now,
                "revision": revision,
            }
        )
    if rows:
        await conn.execute(sa.insert(providers), rows)


async def _copy_keys(conn: AsyncConnection, revision: int, now: float) -> None:
    their = _their_keys.c
    select = sa.select(
        their.id,
        providers.c.id,
        their.key_value,
        sa.true(),
        sa.literal(now, sa.Double),
        sa.literal(revision, sa.BigInteger),
    ).select_from(
        _their_keys.join(_their_providers, _their_providers.c.id == their.provider_id).join(
            providers, providers.c.name == _their_providers.c.name
        )
    )
    columns = ["id", "provider_id", "value", "active", "added_at", "revision"]
    await conn.execute(sa.insert(keys).from_select(columns, select))
    # their file:line (`source`) is not known until the next sync; the digest is, at once
    hashed = sa.func.encode(sa.func.sha256(sa.func.convert_to(keys.c.value, "UTF8")), "hex")
    await conn.execute(
        sa.update(keys)
        .where(keys.c.digest.is_(None))
        .values(digest=hashed, suffix=suffix_of(keys.c.value))
    )
    # keys added later take ids after the original's
    next_id = sa.select(sa.func.coalesce(sa.func.max(keys.c.id), 0) + 1).scalar_subquery()
    sequence = sa.func.pg_get_serial_sequence(keys.name, "id")
    await conn.execute(sa.select(sa.func.setval(sequence, next_id, False)))


def _epoch(column: Any) -> sa.ColumnElement[float]:
    return sa.cast(sa.extract("epoch", column), sa.Double)


async def _copy_status(conn: AsyncConnection, revision: int, now: float) -> int:
    """Copy the status rows; returns how many had a status this version does not know (they
    are imported `untested`)."""
    their = _their_status.c
    lowered = sa.func.lower(their.status)
    status = sa.case((lowered.in_(_KNOWN), lowered), else_=KeyStatus.UNTESTED.value)
    next_check = sa.func.coalesce(_epoch(their.next_check_time), sa.literal(now, sa.Double))
    rate_limited = status == KeyStatus.RATE_LIMITED.value
    select = sa.select(
        their.key_id,
        their.model_name,
        sa.true(),
        status,
        sa.case((status.in_(_CLEAN), sa.null()), else_=status),
        _epoch(their.failing_since),
        sa.case((rate_limited, next_check), else_=sa.null()),
        next_check,
        _epoch(their.last_checked),
        their.status_code,
        sa.cast(their.response_time, sa.Double) * 1000.0,
        sa.func.left(their.error_message, ERROR_MESSAGE_LIMIT),
        sa.literal(revision, sa.BigInteger),
    ).where(their.key_id.in_(sa.select(keys.c.id)))
    columns = [
        "key_id",
        "model",
        "active",
        "status",
        "reason",
        "failing_since",
        "cooldown_until",
        "next_check_at",
        "last_checked_at",
        "status_code",
        "latency_ms",
        "error_message",
        "revision",
    ]
    await conn.execute(sa.insert(key_status).from_select(columns, select))
    unknown = sa.select(sa.func.count()).where(sa.func.lower(their.status).not_in(_KNOWN))
    return int(await conn.scalar(unknown.select_from(_their_status)) or 0)


async def _counts(
    conn: AsyncConnection, adoption: Adoption, now: float
) -> tuple[ProviderImport, ...]:
    """What was imported, per provider: keys, status rows by status, rows due now."""
    per_provider = (
        sa.select(providers.c.name, sa.func.count(keys.c.id))
        .select_from(providers.outerjoin(keys, keys.c.provider_id == providers.c.id))
        .group_by(providers.c.name)
    )
    key_counts: dict[str, int] = {
        name: int(count) for name, count in await conn.execute(per_provider)
    }
    statuses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    due: dict[str, int] = defaultdict(int)
    query = (
        sa.select(
            providers.c.name,
            key_status.c.status,
            sa.func.count(),
            sa.func.count().filter(key_status.c.next_check_at <= now),
        )
        .select_from(
            key_status.join(keys, keys.c.id == key_status.c.key_id).join(
                providers, providers.c.id == keys.c.provider_id
            )
        )
        .group_by(providers.c.name, key_status.c.status)
        .order_by(providers.c.name, sa.func.count().desc(), key_status.c.status)
    )
    for name, status, count, due_now in await conn.execute(query):
        statuses[name].append((status, int(count)))
        due[name] += int(due_now)
    return tuple(
        ProviderImport(
            name=name,
            configured=name in adoption.providers,
            keys=count,
            rows=sum(n for _, n in statuses[name]),
            due=due[name],
            statuses=tuple(statuses[name]),
        )
        for name, count in sorted(key_counts.items())
    )
