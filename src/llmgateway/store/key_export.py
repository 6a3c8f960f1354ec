"""The keys with their secrets, for `llmgateway keys export`: read in pages, never all at once.

`export_pages` walks the active keys of enabled providers that have at least one active status
row the `KeyFilter` selects, in key order, resuming after the last key seen (keyset
pagination, as `key_list` does: no OFFSET, no cursor held open, so it holds through a
transaction pooler and costs the same on the last page of 100,000 keys as on the first). The
secret comes from the store, which keeps it for the gateways' pools (`keys.value`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa

from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.observe.masking import fingerprint
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.status import SHARED_MODEL_LABEL
from llmgateway.store.tables import key_status, keys, providers

PAGE = 1000
"""Keys per query."""


@dataclass(frozen=True, slots=True)
class ExportedKey:
    """One key as `keys export` writes it. `status` is the status of its selected rows (several
    joined by `+` when its models differ), `source` where the files hold it (None until a sync
    recorded it). The secret is left out of repr."""

    key_id: int
    provider: str
    fingerprint: str
    status: str
    source: str | None
    secret: str = field(repr=False)


_ks = key_status.c


def _row_matches(chosen: KeyFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [_ks.key_id == keys.c.id, _ks.active]
    if chosen.model is not None:
        model = ALL_MODELS if chosen.model == SHARED_MODEL_LABEL else chosen.model
        conditions.append(_ks.model == model)
    if chosen.statuses:
        conditions.append(_ks.status.in_(sorted(s.value for s in chosen.statuses)))
    return conditions


async def export_pages(
    store: Store, chosen: KeyFilter, page: int = PAGE
) -> AsyncIterator[list[ExportedKey]]:
    """The active keys `chosen` selects, in key order, `page` at a time; each page is one
    short transaction of its own (two queries: the keys, then their selected statuses)."""
    base = (
        sa.select(keys.c.id, providers.c.name, keys.c.value, keys.c.source)
        .select_from(keys.join(providers, providers.c.id == keys.c.provider_id))
        .where(keys.c.active, providers.c.active)
        .where(sa.exists().where(*_row_matches(chosen)))
    )
    if chosen.provider is not None:
        base = base.where(providers.c.name == chosen.provider)
    after: int | None = None
    while True:
        query = base if after is None else base.where(keys.c.id > after)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(keys.c.id).limit(page))).all()
            ids = [row[0] for row in rows]
            statuses: dict[int, set[str]] = defaultdict(set)
            if ids:
                status_query = (
                    sa.select(_ks.key_id, _ks.status)
                    .where(*_row_matches(chosen)[1:], _ks.key_id.in_(ids))
                    .distinct()
                )
                for key_id, status in (await conn.execute(status_query)).all():
                    statuses[key_id].add(status)
        if rows:
            yield [
                ExportedKey(
                    key_id=key_id,
                    provider=provider,
                    fingerprint=fingerprint(secret),
                    status="+".join(sorted(statuses[key_id])),
                    source=source,
                    secret=secret,
                )
                for key_id, provider, secret, source in rows
            ]
        if len(rows) < page:
            return
        after = rows[-1][0]
