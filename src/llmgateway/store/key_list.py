"""The keys one by one, for `llmgateway keys list|show`: read in pages, never all at once.

`listing_pages` walks the active (key, model) rows a `KeyFilter` selects in key order, one
short query per page resuming after the last row seen (keyset pagination: no OFFSET, no cursor
held open, so it works the same through a transaction pooler and costs the same on the last
page of 100,000 keys as on the first). `by_fingerprint` finds keys by a prefix of their SHA-256
on the indexed `keys.digest`, with every row they have, active or not. Rows carry the key masked
and by fingerprint; the secret never leaves this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.status import SHARED_MODEL_LABEL
from llmgateway.store.tables import key_status, keys, providers

PAGE = 500
"""Rows per query."""


@dataclass(frozen=True, slots=True)
class KeyListing:
    """One (key, model) row as the commands show it. `model` is `shared` under
    `shared_key_status`; `serving` is False when the key left its files, the model left the
    config or the provider was disabled; `disabled_at` when `llmgateway keys disable` took the
    key out (None: it is not). `error` is the last error as stored (masked when it
    was written, and the key masked again here), `source` where the files hold the key."""

    key_id: int
    provider: str
    fingerprint: str
    masked: str
    source: str | None
    model: str
    status: str
    reason: str | None
    status_code: int | None
    error: str | None
    failing_since: float | None
    cooldown_until: float | None
    next_check_at: float | None
    last_checked_at: float | None
    latency_ms: float | None
    serving: bool
    in_files: bool
    provider_enabled: bool
    added_at: float
    removed_at: float | None
    disabled_at: float | None = None


_ks = key_status.c
_pool = key_status.join(keys, keys.c.id == _ks.key_id).join(
    providers, providers.c.id == keys.c.provider_id
)
_COLUMNS = (
    _ks.key_id,
    _ks.model,
    providers.c.name,
    keys.c.value,
    keys.c.source,
    _ks.status,
    _ks.reason,
    _ks.status_code,
    _ks.error_message,
    _ks.failing_since,
    _ks.cooldown_until,
    _ks.next_check_at,
    _ks.last_checked_at,
    _ks.latency_ms,
    _ks.active,
    keys.c.active,
    providers.c.active,
    keys.c.added_at,
    keys.c.removed_at,
    keys.c.disabled_at,
)


LISTING_COLUMNS = _COLUMNS
"""The columns a `KeyListing` is made of (`listing`), from `key_pool`; the first two are the
key id and the model, the fourth the secret."""


def _where(chosen: KeyFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [_ks.active, keys.c.active, providers.c.active]
    if chosen.provider is not None:
        conditions.append(providers.c.name == chosen.provider)
    if chosen.model is not None:
        model = ALL_MODELS if chosen.model == SHARED_MODEL_LABEL else chosen.model
        conditions.append(_ks.model == model)
    by_status: list[sa.ColumnElement[bool]] = []
    if chosen.statuses:
        # a disabled key is in state `disabled` whatever its last status: the states partition
        by_status.append(
            sa.and_(
                _ks.status.in_(sorted(s.value for s in chosen.statuses)),
                keys.c.disabled_at.is_(None),
            )
        )
    if chosen.disabled:
        by_status.append(keys.c.disabled_at.is_not(None))
    if by_status:
        conditions.append(sa.or_(*by_status))
    if chosen.status_code is not None:
        conditions.append(_ks.status_code == chosen.status_code)
    if chosen.search is not None:
        conditions.append(_found_by(*search_terms(chosen.search)))
    return conditions


HEX = frozenset("0123456789abcdef")
ELLIPSES = ("…", "...")


def search_terms(text: str) -> tuple[str | None, str | None]:
    """What a search for `text` looks for: (a fingerprint prefix, the last four characters of
    a masked key). 4 to 64 hex digits are a fingerprint prefix (and, when 4, a suffix too);
    `sk-…a1b2`, `…a1b2` or any other 4 characters are a suffix. Raises `ValueError` for
    anything else: a search never matches a substring of the secret."""
    text = text.strip()
    for ellipsis in ELLIPSES:
        if ellipsis in text:
            text = text.rsplit(ellipsis, 1)[1]
            break
    else:
        if 4 <= len(text) <= 64 and set(text.lower()) <= HEX:
            return text.lower(), (text if len(text) == 4 else None)
    if len(text) == 4 and text.isprintable() and not any(c.isspace() for c in text):
        return None, text
    raise ValueError(
        "search for a fingerprint (4 to 64 hex digits) or the last four characters "
        "of the masked key (as in sk-…a1b2)"
    )


def _found_by(prefix: str | None, suffix: str | None) -> sa.ColumnElement[bool]:
    found: list[sa.ColumnElement[bool]] = []
    if prefix is not None:
        # a range on the indexed digest ("g" sorts after every hex digit)
        found.append(sa.and_(keys.c.digest >= prefix, keys.c.digest < prefix + "g"))
    if suffix is not None:
        found.append(keys.c.suffix == suffix)
    return sa.or_(*found)


key_pool = _pool
"""The (key, model) rows joined with their key and provider, as the filters read them."""


def key_conditions(chosen: KeyFilter) -> list[sa.ColumnElement[bool]]:
    """The conditions selecting the active rows `chosen` selects (from `key_pool`)."""
    return _where(chosen)


async def row_pages(
    store: Store,
    columns: Sequence[sa.ColumnElement[Any]],
    chosen: KeyFilter,
    limit: int | None = None,
    page: int = PAGE,
) -> AsyncIterator[Sequence[sa.Row[Any]]]:
    """`columns` (the first two: key id and model) of the active rows `chosen` selects, in key
    order, `page` at a time, `limit` in all (None: every one). Each page is one short query of
    its own, resuming after the last row seen (keyset, no OFFSET, no cursor held)."""
    after: tuple[int, str] | None = None
    left = limit
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        query = sa.select(*columns).select_from(_pool).where(*_where(chosen))
        if after is not None:
            key_id, model = after
            # `key_id >=` first: a range on the primary key's first column, which every
            # planner turns into an index seek (the OR alone may make it scan from the start)
            query = query.where(
                _ks.key_id >= key_id, sa.or_(_ks.key_id > key_id, _ks.model > model)
            )
        query = query.order_by(_ks.key_id, _ks.model).limit(size)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        yield rows
        if len(rows) < size:
            return
        after = (rows[-1][0], rows[-1][1])
        if left is not None:
            left -= len(rows)


async def listing_pages(
    store: Store, chosen: KeyFilter, limit: int | None = None, page: int = PAGE
) -> AsyncIterator[list[KeyListing]]:
    """The active rows `chosen` selects, in key order, `page` at a time, `limit` in all
    (None: every one). Each page is one short query of its own."""
    async for rows in row_pages(store, _COLUMNS, chosen, limit, page):
        if rows:
            yield [_listing(row) for row in rows]


async def count_matching(store: Store, chosen: KeyFilter) -> int:
    """How many active rows `chosen` selects."""
    query = sa.select(sa.func.count()).select_from(_pool).where(*_where(chosen))
    async with store.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def by_fingerprint(
    store: Store, prefix: str, most: int = 20
) -> tuple[list[list[KeyListing]], int]:
    """The keys whose SHA-256 starts with `prefix` (lower-case hex), at most `most` of them
    by id, each with all its rows (active or not); and how many keys match in all."""
    prefix = prefix.lower()
    # A range on the indexed column: every hex string with the prefix sorts in [prefix,
    # prefix + "g"), as "g" comes after every hex digit.
    matches = sa.and_(keys.c.digest >= prefix, keys.c.digest < prefix + "g")
    ids_query = sa.select(keys.c.id, keys.c.digest).where(matches).order_by(keys.c.id)
    count_query = sa.select(sa.func.count()).select_from(keys).where(matches)
    async with store.engine.connect() as conn:
        total = int(await conn.scalar(count_query) or 0)
        ids = [
            key_id
            for key_id, hashed in (await conn.execute(ids_query.limit(most))).all()
            if hashed.startswith(prefix)
        ]
        rows: Sequence[Sequence[Any]] = []
        if ids:
            query = (
                sa.select(*_COLUMNS)
                .select_from(_pool)
                .where(_ks.key_id.in_(ids))
                .order_by(_ks.key_id, _ks.model)
            )
            rows = (await conn.execute(query)).all()
    found: dict[int, list[KeyListing]] = {key_id: [] for key_id in ids}
    for row in rows:
        found[row[0]].append(_listing(row))
    return [listing for listing in found.values() if listing], total


def listing(row: Sequence[Any]) -> KeyListing:
    """The `KeyListing` of a row of `LISTING_COLUMNS`: the key masked, never in full."""
    return _listing(row)


def _listing(row: Sequence[Any]) -> KeyListing:
    (
        key_id,
        model,
        provider,
        secret,
        source,
        status,
        reason,
        status_code,
        error,
        failing_since,
        cooldown_until,
        next_check_at,
        last_checked_at,
        latency_ms,
        row_active,
        key_active,
        provider_active,
        added_at,
        removed_at,
        disabled_at,
    ) = row
    masked = mask(secret)
    if error is not None and secret:
        error = error.replace(secret, masked)
    return KeyListing(
        key_id=key_id,
        provider=provider,
        fingerprint=fingerprint(secret),
        masked=masked,
        source=source,
        model=SHARED_MODEL_LABEL if model == ALL_MODELS else model,
        status=status,
        reason=reason,
        status_code=status_code,
        error=error,
        failing_since=failing_since,
        cooldown_until=cooldown_until,
        next_check_at=next_check_at,
        last_checked_at=last_checked_at,
        latency_ms=latency_ms,
        serving=bool(row_active and key_active and provider_active),
        in_files=bool(key_active),
        provider_enabled=bool(provider_active),
        added_at=added_at,
        removed_at=removed_at,
        disabled_at=disabled_at,
    )
