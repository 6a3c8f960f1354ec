"""Hourly token counts in the store: per client × route × provider × model × key and hour.

The gateways count the tokens of every answer they relay (`conductor.token_writer`) and add them
here in the background, one statement per batch (`record`); the Keeper deletes the hours older
than `worker.usage_retention_days` (`purge_before`); `llmgateway usage` reads the sums
(`totals`), the gateways each client's spend of its quota (`period_sums`). A key is shown by
its fingerprint and masked form, never in full.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from llmgateway.core.clients import Period
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import USAGE_HOUR, TokenCount
from llmgateway.store import Store
from llmgateway.store.status import SQLITE_BULK, json_records
from llmgateway.store.tables import insert_into, keys, token_usage

By = Literal["client", "route", "model", "key", "provider"]
"""What `llmgateway usage` groups by."""

_COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
_ALL = (*_COUNTS, "missing")
_SLOT = ("hour", "client", "route", "provider", "model", "key_id")
_FIELDS: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "hour": sa.BigInteger,
    "client": sa.Text,
    "route": sa.Text,
    "provider": sa.Text,
    "model": sa.Text,
    "key_id": sa.Integer,
    **dict.fromkeys(_ALL, sa.BigInteger),
}


async def record(store: Store, counts: Sequence[TokenCount]) -> None:
    """Add `counts` to the store in one transaction (one statement where the database can
    take the rows as one JSON parameter)."""
    if not counts:
        return
    rows = [_row(count) for count in counts]
    async with store.engine.begin() as conn:
        insert = insert_into(conn, token_usage)
        added = {name: token_usage.c[name] + insert.excluded[name] for name in _ALL}
        index = [token_usage.c[name] for name in _SLOT]
        if conn.dialect.name == "sqlite" and not SQLITE_BULK:
            await conn.execute(insert.on_conflict_do_update(index_elements=index, set_=added), rows)
            return
        found = json_records(conn.dialect.name, "p_tokens", _FIELDS)
        # a WHERE before ON CONFLICT: SQLite would read the ON as a join's
        chosen = sa.select(*(found[name] for name in _FIELDS)).where(found["requests"] > 0)
        upsert = insert.from_select(list(_FIELDS), chosen).on_conflict_do_update(
            index_elements=index, set_=added
        )
        await conn.execute(upsert, {"p_tokens": json.dumps(rows)})


def _row(count: TokenCount) -> dict[str, object]:
    return {
        "hour": count.hour,
        "client": count.client,
        "route": count.route,
        "provider": count.provider,
        "model": count.model,
        "key_id": count.key_id,
        "requests": count.requests,
        "input_tokens": count.input,
        "output_tokens": count.output,
        "cached_tokens": count.cached,
        "reasoning_tokens": count.reasoning,
        "missing": count.missing,
    }


async def purge_before(store: Store, before: float) -> int:
    """Delete the counts of every hour that ended by `before`; returns how many rows went."""
    last = int(before // USAGE_HOUR) * USAGE_HOUR - USAGE_HOUR
    async with store.engine.begin() as conn:
        deleted = await conn.execute(sa.delete(token_usage).where(token_usage.c.hour <= last))
    return max(deleted.rowcount, 0)


@dataclass(frozen=True, slots=True)
class Total:
    """The sums of one group of `llmgateway usage` (`name`: the client, route, model, key as
    `provider fingerprint masked`, or provider)."""

    name: str
    requests: int
    input: int
    output: int
    cached: int
    reasoning: int
    missing: int


async def totals(store: Store, since: float, by: By, clients: Collection[str] = ()) -> list[Total]:
    """The counts of the hours from the one holding `since` on (of `clients` only, when given),
    summed per `by`, the most tokens first."""
    first = int(since // USAGE_HOUR) * USAGE_HOUR
    t = token_usage.c
    sums = [sa.func.sum(t[name]).label(name) for name in _ALL]
    if by == "key":
        group: list[sa.ColumnElement[Any]] = [t.provider, t.key_id, keys.c.value]
        source: Any = token_usage.outerjoin(keys, keys.c.id == t.key_id)
    else:
        group = [{"client": t.client, "route": t.route, "model": t.model}.get(by, t.provider)]
        if by == "model":
            group.insert(0, t.provider)
        source = token_usage
    query = sa.select(*group, *sums).select_from(source).where(t.hour >= first).group_by(*group)
    if clients:
        query = query.where(t.client.in_(sorted(clients)))
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    found = [
        Total(_name(by, row), *(int(row._mapping[name] or 0) for name in _ALL)) for row in rows
    ]
    found.sort(key=lambda total: (-(total.input + total.output), total.name))
    return found


def _name(by: By, row: sa.Row[Any]) -> str:
    values = row._mapping
    if by == "key":  # never the key itself
        secret = values["value"]
        if secret is None:
            return f"{values['provider']} (key {values['key_id']}, purged)"
        return f"{values['provider']} {fingerprint(secret)} {mask(secret)}"
    if by == "model":
        return f"{values['provider']}/{values['model']}"
    return str(values[by])


async def period_sums(
    store: Store, starts: Mapping[Period, int], clients: Collection[str], before: int | None = None
) -> dict[str, dict[Period, int]]:
    """The tokens (input and output) of each of `clients` since each period's start in
    `starts` (and before the hour `before`, when given): one grouped query over the hours
    since the earliest start."""
    if not clients or not starts:
        return {}
    t = token_usage.c
    spent = t.input_tokens + t.output_tokens
    sums = [
        sa.func.sum(sa.case((t.hour >= start, spent), else_=0)).label(period.value)
        for period, start in starts.items()
    ]
    query = (
        sa.select(t.client, *sums)
        .where(t.hour >= min(starts.values()), t.client.in_(list(clients)))
        .group_by(t.client)
    )
    if before is not None:
        query = query.where(t.hour < before)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        row.client: {period: int(row._mapping[period.value] or 0) for period in starts}
        for row in rows
    }
