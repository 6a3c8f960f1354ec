"""Hourly usage counts in the store: requests and failures per key × model and hour.

The gateways count on their request path (a dict increment, `conductor.usage_writer`) and
write the counts here in the background, every `records.USAGE_FLUSH_SEC`: `record` adds one batch
to `key_usage` (per key × model × hour), to `usage_hours` (per provider × hour, what the
overview's rates and chart read) and moves `keys.last_used_at` forward, in one transaction.
So "last used" is as precise as that interval. The Keeper deletes the counts older than
`worker.usage_retention_days` (`purge_before`).

A request counts once per attempt that reached the upstream with a key; it is a failure when
the attempt failed for a reason that is not the client's (a 400 of a malformed request, a model
the upstream does not know: the key worked). The Keeper's probes are not counted: these are the
gateways' traffic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.records import USAGE_HOUR, UsageCount
from llmgateway.store import Store
from llmgateway.store.status import SQLITE_BULK, json_records
from llmgateway.store.tables import insert_into, key_usage, keys, usage_hours

HOUR = USAGE_HOUR


def hour_of(moment: float) -> int:
    """The start of the hour holding `moment` (epoch seconds)."""
    return int(moment // HOUR) * HOUR


_FIELDS: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "key_id": sa.Integer,
    "model": sa.Text,
    "hour": sa.BigInteger,
    "requests": sa.Integer,
    "failures": sa.Integer,
}
_USED: dict[str, type[sa.types.TypeEngine[Any]]] = {"key_id": sa.Integer, "used_at": sa.Double}


async def record(store: Store, counts: Sequence[UsageCount], taken_at: float) -> None:
    """Add `counts` to the store in one transaction, and stamp each key's `last_used_at`:
    `taken_at` (when the counts were taken), or the end of the key's latest hour when that is
    earlier (counts written late, after the store was down, are not stamped as fresh).
    Counts of a key no longer in the store (purged meanwhile) are dropped."""
    if not counts:
        return
    used: dict[int, float] = {}
    hours: dict[tuple[int, str], list[int]] = {}
    for count in counts:
        at = min(taken_at, count.hour + HOUR)
        used[count.key_id] = max(used.get(count.key_id, 0.0), at)
        total = hours.setdefault((count.hour, count.provider), [0, 0])
        total[0] += count.requests
        total[1] += count.failures
    async with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite" and not SQLITE_BULK:
            await _record_each(conn, counts, used)
        else:
            await _record_bulk(conn, counts, used)
        totals = [
            {"hour": hour, "provider": provider, "requests": r, "failures": f}
            for (hour, provider), (r, f) in hours.items()
        ]
        insert = insert_into(conn, usage_hours)
        await conn.execute(
            insert.values(totals).on_conflict_do_update(
                index_elements=[usage_hours.c.hour, usage_hours.c.provider],
                set_=_added(usage_hours, insert),
            )
        )


async def _record_bulk(
    conn: AsyncConnection, counts: Sequence[UsageCount], used: dict[int, float]
) -> None:
    """The per-key counts and times as two statements, each with one JSON parameter."""
    dialect = conn.dialect.name
    rows = json_records(dialect, "p_counts", _FIELDS)
    chosen = sa.select(*(rows[name] for name in _FIELDS)).where(
        rows["key_id"].in_(sa.select(keys.c.id))
    )
    insert = insert_into(conn, key_usage)
    upsert = insert.from_select(list(_FIELDS), chosen).on_conflict_do_update(
        index_elements=[key_usage.c.key_id, key_usage.c.model, key_usage.c.hour],
        set_=_added(key_usage, insert),
    )
    payload = [_row(c) for c in counts]
    await conn.execute(upsert, {"p_counts": json.dumps(payload)})
    times = json_records(dialect, "p_used", _USED)
    stamp = (
        sa.update(keys)
        .where(
            keys.c.id == times["key_id"],
            sa.or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < times["used_at"]),
        )
        .values(last_used_at=times["used_at"])
    )
    stamps = [{"key_id": key_id, "used_at": at} for key_id, at in used.items()]
    await conn.execute(stamp, {"p_used": json.dumps(stamps)})


async def _record_each(
    conn: AsyncConnection, counts: Sequence[UsageCount], used: dict[int, float]
) -> None:
    """The same, a statement per row (SQLite before 3.38)."""
    present = set(await conn.scalars(sa.select(keys.c.id).where(keys.c.id.in_(list(used)))))
    rows = [_row(c) for c in counts if c.key_id in present]
    if not rows:
        return
    insert = insert_into(conn, key_usage)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=[key_usage.c.key_id, key_usage.c.model, key_usage.c.hour],
            set_=_added(key_usage, insert),
        ),
        rows,
    )
    at = sa.bindparam("p_at", type_=sa.Double)
    stamp = (
        sa.update(keys)
        .where(
            keys.c.id == sa.bindparam("p_key", type_=sa.Integer),
            sa.or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < at),
        )
        .values(last_used_at=at)
    )
    await conn.execute(stamp, [{"p_key": k, "p_at": t} for k, t in used.items() if k in present])


def _added(table: sa.Table, insert: Any) -> dict[str, sa.ColumnElement[Any]]:
    """An upsert's update: the counts inserted added to the row's."""
    return {name: table.c[name] + insert.excluded[name] for name in ("requests", "failures")}


async def purge_before(store: Store, before: float) -> int:
    """Delete the counts of every hour that ended by `before`; returns how many per-key rows
    went."""
    last = hour_of(before) - HOUR
    async with store.engine.begin() as conn:
        deleted = await conn.execute(sa.delete(key_usage).where(key_usage.c.hour <= last))
        await conn.execute(sa.delete(usage_hours).where(usage_hours.c.hour <= last))
    return max(deleted.rowcount, 0)


def _row(count: UsageCount) -> dict[str, object]:
    """A count as a row of `key_usage`."""
    return {
        "key_id": count.key_id,
        "model": count.model,
        "hour": count.hour,
        "requests": count.requests,
        "failures": count.failures,
    }
