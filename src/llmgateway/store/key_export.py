"""The keys with their secrets, for `llmgateway keys export`: read in pages, never all at once.

`export_pages` walks the active keys of enabled providers that have at least one active status
row the `KeyFilter` selects, in key order. It reads the rows `keys list` reads, by the same
conditions (`key_list.key_conditions`) and the same keyset pagination, resuming after the last
(key, model) row seen: no OFFSET, no cursor held open, so it holds through a transaction pooler
and costs the same on the last page of 100,000 keys as on the first. The secret comes from the
store, which keeps it for the gateways' pools (`keys.value`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgateway.observe.masking import fingerprint
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_list import row_pages
from llmgateway.store.tables import key_status, keys, providers

PAGE = 1000
"""(key, model) rows per query."""


@dataclass(frozen=True, slots=True)
class ExportedKey:
    """One key as `keys export` writes it. `status` is the status of its selected rows
    (several joined by `+` when its models differ; `disabled` for a key `keys disable` took
    out), `source` where the files hold it (None until a sync recorded it). The secret is left
    out of repr."""

    key_id: int
    provider: str
    fingerprint: str
    status: str
    source: str | None
    secret: str = field(repr=False)


_ks = key_status.c
_COLUMNS = (
    _ks.key_id,
    _ks.model,
    providers.c.name,
    keys.c.value,
    keys.c.source,
    _ks.status,
    keys.c.disabled_at,
)


async def export_pages(
    store: Store, chosen: KeyFilter, page: int = PAGE
) -> AsyncIterator[list[ExportedKey]]:
    """The active keys `chosen` selects, in key order, about `page` rows' worth at a time.

    Each query reads the next `page` selected (key, model) rows after the last one seen, as
    `key_list.listing_pages` does; rows are gathered by key, and a key whose rows a page cut
    is held back until the next page completes it."""
    held: list[Sequence[Any]] = []
    async for rows in row_pages(store, _COLUMNS, chosen, page=page):
        done: list[ExportedKey] = []
        for row in rows:
            if held and held[0][0] != row[0]:
                done.append(_exported(held))
                held = []
            held.append(row)
        if len(rows) < page and held:
            done.append(_exported(held))
        if done:
            yield done


def _exported(rows: Sequence[Sequence[Any]]) -> ExportedKey:
    key_id, _, provider, secret, source, _, disabled_at = rows[0]
    status = "+".join(sorted({row[5] for row in rows}))
    return ExportedKey(
        key_id=key_id,
        provider=provider,
        fingerprint=fingerprint(secret),
        status="disabled" if disabled_at is not None else status,
        source=source,
        secret=secret,
    )
