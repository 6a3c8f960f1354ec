"""Reading the pool (snapshot, delta, counts) and writing status events back."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.key_states import DISABLED
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.records import KeyRow, ProxyRow, Snapshot, StatusCount, StatusEvent
from llmgateway.store.tables import key_status, keys, meta, providers, proxies, proxy_status

ERROR_MESSAGE_LIMIT = 500
"""Stored error messages are cut to this many characters."""


def cut_message(message: str | None) -> str | None:
    """An error message as stored: cut to `ERROR_MESSAGE_LIMIT` characters."""
    return None if message is None else message[:ERROR_MESSAGE_LIMIT]


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


async def snapshot_pages(
    conn: AsyncConnection,
    since_revision: int,
    key_range: tuple[int, int] | None = None,
    page: int = 1000,
) -> AsyncGenerator[Snapshot, None]:
    """Every active row (`since_revision=0`), or every row stamped after `since_revision`
    and every row of a key stamped after it (`keys.revision`: a disable or enable), inactive
    ones included; only keys with `lo < key_id <= hi` given `key_range`.

    The key rows are streamed, `page` at a time (a delta of 100,000 rows never sits in memory
    at once); the first page carries every proxy row, and there is always a first page. The
    revision is read first: a row committed in between shows up again in the next delta,
    which is harmless, instead of being missed."""
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
        keys.c.disabled_at,
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
    if key_range is not None:
        key_query = key_query.where(
            key_status.c.key_id > key_range[0], key_status.c.key_id <= key_range[1]
        )
    keys_read: sa.Executable = key_query
    if since_revision <= 0:
        keys_read = key_query.where(
            key_status.c.active, keys.c.active, providers.c.active, keys.c.disabled_at.is_(None)
        )
        proxy_query = proxy_query.where(proxies.c.active, providers.c.active)
    else:
        # the rows stamped since, and every row of a key stamped since (a disable or enable
        # stamps the key alone): two index reads, each row once
        keys_read = sa.union_all(
            key_query.where(key_status.c.revision > since_revision),
            key_query.where(
                keys.c.revision > since_revision, key_status.c.revision <= since_revision
            ),
        )
        proxy_query = proxy_query.where(
            sa.or_(proxies.c.revision > since_revision, proxy_status.c.revision > since_revision)
        )
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
    names: dict[str, str] = {}  # one string per provider and model name, not one per row
    pending = proxy_rows
    async for part in (await conn.stream(keys_read)).partitions(page):
        key_rows = [
            KeyRow(
                key_id=key_id,
                provider=names.setdefault(provider, provider),
                secret=secret,
                model=names.setdefault(model, model),
                status=KeyStatus(status),
                cooldown_until=cooldown_until,
                active=bool(status_active and key_active and provider_active)
                and disabled_at is None,
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
                disabled_at,
            ) in part
        ]
        yield Snapshot(revision=revision, keys=key_rows, proxies=pending)
        pending = []
    if pending is proxy_rows:  # no key rows: the proxies still come
        yield Snapshot(revision=revision, keys=[], proxies=proxy_rows)


async def max_key_id(conn: AsyncConnection) -> int:
    """The highest key id in the store (0 when it has none)."""
    return int(await conn.scalar(sa.select(sa.func.max(keys.c.id))) or 0)


async def apply_events(conn: AsyncConnection, events: Sequence[StatusEvent], revision: int) -> None:
    """Write `events` in observation order, each guarded so that it only lands on a row last
    checked before it was observed (which also makes a repeated event a no-op).

    The events travel as one JSON parameter and land in one `UPDATE … FROM` per wave, a wave
    holding at most one event per key (so no row is matched twice). A statement per event
    would cost SQLite a hand-over of the GIL per row: under load that made a batch of 500
    take ~0.4 s instead of ~15 ms. SQLite before 3.38 (no `UPDATE … FROM` or built-in JSON)
    takes the statement per event, and so does a batch with an endless deadline (JSON has no
    infinity).
    """
    if not events:
        return
    ordered = sorted(events, key=lambda e: e.observed_at)
    if (conn.dialect.name == "sqlite" and not SQLITE_BULK) or not all(map(_finite, ordered)):
        source = {name: sa.bindparam(f"p_{name}", type_=kind) for name, kind in _FIELDS.items()}
        rows = [{f"p_{name}": value for name, value in _event_params(e).items()} for e in ordered]
        await conn.execute(_update(source, revision), rows)
        return
    stmt = _update(_json_rows(conn.dialect.name), revision)
    for wave in _waves(ordered):
        await conn.execute(stmt, {"p_events": json.dumps([_event_params(e) for e in wave])})


SQLITE_BULK = sqlite3.sqlite_version_info >= (3, 38, 0)
"""Whether this SQLite writes a batch of events in one statement (see `apply_events`)."""

_FIELDS: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "key_id": sa.Integer,
    "model": sa.Text,
    "observed_at": sa.Double,
    "cooldown_until": sa.Double,
    "status": sa.Text,
    "reason": sa.Text,
    "status_code": sa.Integer,
    "error_message": sa.Text,
    "latency_ms": sa.Double,
    "healthy": sa.Boolean,
    "key_level": sa.Boolean,
    "next_check_at": sa.Double,
}
"""An event's fields as the update statement reads them."""


def _json_rows(dialect: str) -> dict[str, sa.ColumnElement[Any]]:
    """The fields of the events in the JSON array bound as `p_events`, one row per event."""
    return json_records(dialect, "p_events", _FIELDS)


def json_records(
    dialect: str, param: str, fields: Mapping[str, type[sa.types.TypeEngine[Any]]]
) -> dict[str, sa.ColumnElement[Any]]:
    """The `fields` of the objects in the JSON array bound as `param`, one row per object:
    many rows in one statement's one parameter (`json_to_recordset` on PostgreSQL,
    `json_each` on SQLite)."""
    records = sa.bindparam(param, type_=sa.Text)
    if dialect == "postgresql":
        rows = (
            sa.func.json_to_recordset(sa.cast(records, sa.JSON))
            .table_valued(*(sa.column(name, kind) for name, kind in fields.items()))
            .render_derived(name="ev", with_types=True)
        )
        return {name: rows.c[name] for name in fields}
    items = sa.func.json_each(records).table_valued("value").alias("ev")
    return {
        name: sa.func.json_extract(items.c.value, f"$.{name}", type_=kind)
        for name, kind in fields.items()
    }


def _waves(ordered: Sequence[StatusEvent]) -> list[list[StatusEvent]]:
    """`ordered` split so that no wave holds a key twice: a key's n-th event goes to wave n,
    which keeps each key's events in order (other keys' rows are independent of it)."""
    waves: list[list[StatusEvent]] = []
    seen: dict[int, int] = {}
    for event in ordered:
        n = seen.get(event.key_id, 0)
        seen[event.key_id] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(event)
    return waves


def _update(event: Mapping[str, sa.ColumnElement[Any]], revision: int) -> sa.Update:
    """The guarded update of the rows one event is about (its fields read from `event`)."""
    row = key_status.c
    observed, cooldown = event["observed_at"], event["cooldown_until"]
    return (
        sa.update(key_status)
        .where(
            row.key_id == event["key_id"],
            # a dead key (invalid_key, no_access) is dead for every model it serves
            sa.or_(row.model == event["model"], event["key_level"]),
            sa.or_(row.last_checked_at.is_(None), row.last_checked_at < observed),
        )
        .values(
            status=event["status"],
            reason=event["reason"],
            status_code=event["status_code"],
            error_message=event["error_message"],
            latency_ms=event["latency_ms"],
            last_checked_at=observed,
            cooldown_until=sa.case(
                (cooldown.is_(None), row.cooldown_until),
                (row.cooldown_until.is_(None), cooldown),
                (cooldown > row.cooldown_until, cooldown),
                else_=row.cooldown_until,
            ),
            failing_since=sa.case(
                (event["healthy"], sa.null()),
                else_=sa.func.coalesce(row.failing_since, observed),
            ),
            next_check_at=sa.func.coalesce(event["next_check_at"], row.next_check_at),
            revision=revision,
        )
    )


_KEY_LEVEL = frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS})


def _finite(event: StatusEvent) -> bool:
    times = (event.observed_at, event.cooldown_until, event.next_check_at, event.latency_ms)
    return all(t is None or math.isfinite(t) for t in times)


def _event_params(event: StatusEvent) -> dict[str, object]:
    return {
        "key_id": event.key_id,
        "model": event.model,
        "observed_at": event.observed_at,
        "cooldown_until": event.cooldown_until,
        "status": KeyStatus(event.status).value,
        "reason": event.reason.value if event.reason is not None else None,
        "status_code": event.status_code,
        "error_message": cut_message(event.error_message),
        "latency_ms": event.latency_ms,
        "healthy": event.status == KeyStatus.VALID,
        "key_level": event.status in _KEY_LEVEL,
        "next_check_at": event.next_check_at,
    }


async def status_counts(conn: AsyncConnection) -> list[StatusCount]:
    """Active (key, model) rows per provider, model and status, with the soonest next check;
    the rows of a disabled key count under the status `disabled`, whatever their own."""
    shown_status = sa.case(
        (keys.c.disabled_at.is_not(None), sa.literal(DISABLED)), else_=key_status.c.status
    ).label("shown_status")
    query = (
        sa.select(
            providers.c.name,
            key_status.c.model,
            shown_status,
            sa.func.count(),
            sa.func.min(key_status.c.next_check_at),
        )
        .select_from(
            key_status.join(keys, keys.c.id == key_status.c.key_id).join(
                providers, providers.c.id == keys.c.provider_id
            )
        )
        .where(key_status.c.active, keys.c.active, providers.c.active)
        .group_by(providers.c.name, key_status.c.model, shown_status)
        .order_by(providers.c.name, key_status.c.model, shown_status)
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
