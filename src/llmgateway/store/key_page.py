"""One page of the console's keys table: filtered, sorted, paged by keyset, counted with a cap.

The rows are the (key, model) status rows a `KeyFilter` selects (`key_list.key_conditions`,
the filter `keys list`, `export` and the actions use), ordered by a `Sort` column and then by
(key id, model), so that every row has one place in the order. A page resumes after (or, going
back, before) the row a `Cursor` names: no OFFSET, so the last page of 100,000 keys costs what
the first does, and rows added or changed meanwhile never make a page repeat or skip one that
stayed put. A sort on a column that may be empty (`failing_since`, `status_code`) walks the
rows that have a value first, then those without, each part on an index of its own.

Counting stops at `COUNT_CAP` (shown as "10,000+"), so no count reads every row. The secret
never leaves this module: rows carry the key masked and by fingerprint, and the proxy a key is
bound to is worked out here by a function the caller passes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.egress import DIRECT
from llmgateway.observe.masking import mask
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_list import (
    LISTING_COLUMNS,
    KeyListing,
    key_conditions,
    key_pool,
    listing,
)
from llmgateway.store.tables import key_status, keys, providers

COUNT_CAP = 10_000
"""Rows counted at most; beyond it the page says `10,000+`."""
FEW = 5_000
"""Rows a filter selects at most for the page to be read by the filter's indexes (then
sorted); beyond, the rows are walked in the sort's order (a page is at most 200 rows)."""
SIZES = (25, 50, 100, 200)
"""The page sizes offered."""
SMALLEST, LARGEST = SIZES[0], SIZES[-1]
ERROR_SHOWN = 200
"""Characters of a stored error shown (the rest cut, marked by `…`)."""

_TOKEN = re.compile(r"[A-Za-z0-9_\-]{20,}")

Egress = Callable[[str, str], str]
"""(provider name, secret) → the egress a key leaves by, as shown (`direct`, a proxy)."""


class Sort(enum.StrEnum):
    """The columns the keys page sorts by."""

    KEY = "key"
    STATUS = "status"
    FAILING_SINCE = "failing_since"
    NEXT_CHECK = "next_check"
    STATUS_CODE = "status_code"


_ks = key_status.c
_COLUMN: dict[Sort, sa.ColumnElement[Any] | None] = {
    Sort.KEY: None,
    Sort.STATUS: _ks.status,
    Sort.FAILING_SINCE: _ks.failing_since,
    Sort.NEXT_CHECK: _ks.next_check_at,
    Sort.STATUS_CODE: _ks.status_code,
}
_NULLABLE = frozenset({Sort.FAILING_SINCE, Sort.STATUS_CODE})


DAMAGED = "the page link is damaged: start again from the first page"


class BadCursorError(ValueError):
    """A page link whose cursor is not one this module wrote for this sort."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A place in the order of a sort: the row (`value` of the sort column, `key_id`, `model`)
    a page starts after, or (`before`) ends before. `value` is None for a row without one,
    which a nullable sort puts after every row that has one."""

    sort: Sort
    descending: bool
    before: bool
    value: str | float | None
    key_id: int
    model: str

    def encode(self) -> str:
        """The cursor as it travels in a URL: opaque, URL-safe."""
        fields = [self.sort.value, self.descending, self.before, self.value, self.key_id]
        raw = json.dumps([*fields, self.model], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: Sort, descending: bool) -> Cursor:
        """The cursor `encode` wrote, for this `sort` and direction; `BadCursorError` for
        anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            name, down, before, value, key_id, model = json.loads(raw)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise BadCursorError(DAMAGED) from exc
        if name != sort.value or down is not descending:
            raise BadCursorError("the page link is for another sort: start from the first page")
        if not _valid(sort, value, key_id, model) or not isinstance(before, bool):
            raise BadCursorError(DAMAGED)
        return cls(sort, descending, before, value, key_id, model)


def _valid(sort: Sort, value: object, key_id: object, model: object) -> bool:
    if type(key_id) is not int or not isinstance(model, str) or len(model) > 1000:
        return False
    if sort is Sort.KEY:
        return value is None
    if sort is Sort.STATUS:
        return isinstance(value, str) and len(value) <= 100
    if sort is Sort.STATUS_CODE:
        return value is None or type(value) is int
    if value is None:
        return sort is Sort.FAILING_SINCE
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PageQuery:
    """What the page asks for: the rows `key_filter` selects, by `sort` (`descending`),
    `size` at a time (`SMALLEST`…`LARGEST`)."""

    key_filter: KeyFilter
    sort: Sort = Sort.KEY
    descending: bool = False
    size: int = 50


@dataclass(frozen=True, slots=True)
class PageRow:
    """One row as the page shows it: the listing (key masked, error masked and cut to
    `ERROR_SHOWN`), the egress the key is bound to, and where it sits in the order."""

    listing: KeyListing
    egress: str
    last_used_at: float | None = None


@dataclass(frozen=True, slots=True)
class KeyPage:
    """A page of rows, how many rows match in all (`total`, at most `COUNT_CAP`; `capped` when
    there are more), and the cursors of the pages after and before it (None: there is none)."""

    rows: list[PageRow]
    total: int
    capped: bool
    next: Cursor | None
    previous: Cursor | None


@dataclass(frozen=True, slots=True)
class _Part:
    """A run of the order read by one query: rows with a value of the sort column (`has`
    True), without one (False), or every row (None: the sort has no empty values)."""

    has: bool | None


def _parts(sort: Sort) -> list[_Part]:
    if sort in _NULLABLE:
        return [_Part(True), _Part(False)]
    return [_Part(None)]


def _order_columns(sort: Sort, part: _Part) -> list[sa.ColumnElement[Any]]:
    column = _COLUMN[sort]
    ties: list[sa.ColumnElement[Any]] = [_ks.key_id, _ks.model]
    return ties if column is None or part.has is False else [column, *ties]


def _part_of(sort: Sort, cursor: Cursor) -> int:
    return 1 if sort in _NULLABLE and cursor.value is None else 0


def _query(
    conditions: list[sa.ColumnElement[bool]],
    sort: Sort,
    part: _Part,
    backwards: bool,
    cursor: Cursor | None,
    size: int,
    few: bool,
) -> sa.Select[Any]:
    """One part's rows after (before, `backwards`) `cursor`. With `few` (the filter selects
    at most `FEW` rows) the order is put in terms no index has, so that the database finds
    the rows by the filter's indexes and sorts those few, instead of walking the sort's
    index past every row the filter drops."""
    columns = _order_columns(sort, part)
    if few:
        columns = [sa.func.coalesce(c, c) for c in columns]
    query = sa.select(*LISTING_COLUMNS, keys.c.last_used_at).select_from(key_pool)
    query = query.where(*conditions)
    column = _COLUMN[sort]
    if column is not None and part.has is not None:
        if few:  # the filter's indexes find the rows, not the sort column's
            column = sa.func.coalesce(column, column)
        query = query.where(column.is_not(None) if part.has else column.is_(None))
    if cursor is not None:
        place = [cursor.value, cursor.key_id, cursor.model][-len(columns) :]
        row, at = sa.tuple_(*columns), sa.tuple_(*[sa.literal(v) for v in place])
        query = query.where(row < at if backwards else row > at)
    return query.order_by(*[c.desc() if backwards else c.asc() for c in columns]).limit(size)


async def _read(
    conn: AsyncConnection,
    query: PageQuery,
    conditions: list[sa.ColumnElement[bool]],
    cursor: Cursor | None,
    few: bool,
) -> tuple[list[Sequence[Any]], bool]:
    """The rows of the page `cursor` names, in page order, and whether more lie beyond them
    (in the direction read: before them when `cursor.before`)."""
    sort, size = query.sort, query.size
    back = cursor is not None and cursor.before
    parts = _parts(sort)
    order = list(reversed(range(len(parts)))) if back else list(range(len(parts)))
    start = 0 if cursor is None else order.index(_part_of(sort, cursor))
    found: list[Sequence[Any]] = []
    for index in order[start:]:
        at = cursor if index == order[start] else None
        want = size + 1 - len(found)
        backwards = back != query.descending
        read = _query(conditions, sort, parts[index], backwards, at, want, few)
        found += (await conn.execute(read)).all()
        if len(found) > size:
            break
    more = len(found) > size
    found = found[:size]
    if back:
        found.reverse()
    return found, more


_BASE = len(key_conditions(KeyFilter()))  # the `active` terms every filter has
_HINT = "0.001"
"""The likelihood SQLite is told the most selective term of a short filter has."""


async def _conditions(
    conn: AsyncConnection, chosen: KeyFilter
) -> tuple[list[sa.ColumnElement[bool]], list[_Term]]:
    """`key_conditions(chosen)`, the provider named by its id (looked up first: a planner
    estimates how many keys one provider id has, not how many one provider name has), and
    the terms of the filter's fields that one table's index can answer alone."""
    rest = KeyFilter(search=chosen.search)
    terms: list[_Term] = []
    if chosen.provider is not None:
        found = await conn.scalar(
            sa.select(providers.c.id).where(providers.c.name == chosen.provider)
        )
        by_id = keys.c.provider_id == found if found is not None else sa.false()
        terms.append(_Term([by_id], [sa.select(keys.c.id).where(by_id)]))
    if chosen.model is not None:
        where = key_conditions(KeyFilter(model=chosen.model))[_BASE:]
        terms.append(_Term(where, [sa.select(_ks.key_id).where(*where)]))
    if chosen.statuses or chosen.disabled:
        where = key_conditions(KeyFilter(statuses=chosen.statuses, disabled=chosen.disabled))
        counts = [sa.select(_ks.key_id).where(_ks.status.in_([s.value for s in chosen.statuses]))]
        if chosen.disabled:
            counts.append(sa.select(keys.c.id).where(keys.c.disabled_at.is_not(None)))
        terms.append(_Term(where[_BASE:], counts[int(not chosen.statuses) :]))
    if chosen.status_code is not None:
        where = [_ks.status_code == chosen.status_code]
        terms.append(_Term(where, [sa.select(_ks.key_id).where(*where)]))
    conditions = key_conditions(rest)
    for term in terms:
        conditions += term.where
    return conditions, terms


@dataclass(frozen=True, slots=True)
class _Term:
    """A filter field's conditions, and the queries on one table (each on its own index)
    whose rows bound how many rows the field selects."""

    where: list[sa.ColumnElement[bool]]
    counts: list[sa.Select[Any]]


async def _steered(
    conn: AsyncConnection, chosen: KeyFilter, terms: list[_Term]
) -> list[sa.ColumnElement[bool]] | None:
    """The filter's conditions with its most selective field marked as such, for SQLite
    (None: no field selects at most `FEW` rows; the sort's index leads then).

    SQLite keeps an average of rows per value of each index, not a histogram, so it takes
    `model = 'shared'` (100 rows of 200,000) for a third of the table and `provider_id = 2`
    (100 keys) for half, and walks every key to find them. Each field's rows are counted on
    its own index (stopping at `FEW`), and the fewest is wrapped in `likelihood()`, which
    makes the planner start from that index."""
    bounded = [sum([await _count_rows(conn, count) for count in term.counts]) for term in terms]
    if min(bounded) > FEW:
        return None
    fewest = bounded.index(min(bounded))
    conditions = key_conditions(KeyFilter(search=chosen.search))
    for index, term in enumerate(terms):
        if index == fewest:
            conditions += [sa.func.likelihood(w, sa.literal_column(_HINT)) for w in term.where]
        else:
            conditions += term.where
    return conditions


async def _count_rows(conn: AsyncConnection, query: sa.Select[Any]) -> int:
    return int(
        await conn.scalar(sa.select(sa.func.count()).select_from(query.limit(FEW + 1).subquery()))
        or 0
    )


async def _count(conn: AsyncConnection, conditions: list[sa.ColumnElement[bool]]) -> int:
    """The rows `conditions` select, counted up to `COUNT_CAP + 1`."""
    matching = (
        sa.select(sa.literal(1).label("one"))
        .select_from(key_pool)
        .where(*conditions)
        .limit(COUNT_CAP + 1)
        .subquery()
    )
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(matching)) or 0)


def _cursor_at(query: PageQuery, row: Sequence[Any], before: bool) -> Cursor:
    column = _COLUMN[query.sort]
    value = None if column is None else row[LISTING_COLUMNS.index(column)]
    return Cursor(query.sort, query.descending, before, value, row[0], row[1])


async def key_page(
    store: Store, query: PageQuery, cursor: Cursor | None = None, egress: Egress | None = None
) -> KeyPage:
    """The page of `query` that `cursor` names (None: the first), with the bounded count.
    `egress` works out the proxy each key is bound to (None: `direct` for every key)."""
    async with store.engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # the cost of an index probe on an SSD (the default, 4, is a spinning disk's):
            # else a few thousand probes lose to reading the whole status table
            await conn.execute(sa.text("SET LOCAL random_page_cost = 1.1"))
        conditions, terms = await _conditions(conn, query.key_filter)
        if terms and conn.dialect.name == "sqlite":
            conditions = await _steered(conn, query.key_filter, terms) or conditions
        total = await _count(conn, conditions)
        few = total <= FEW
        rows, more = await _read(conn, query, conditions, cursor, few)
        if cursor is not None and cursor.before and not more:
            cursor = None  # back at the start: show the first page, full
            rows, more = await _read(conn, query, conditions, None, few)
    forward = cursor is None or not cursor.before
    after_last = more if forward else True
    before_first = (cursor is not None) if forward else more
    shown = [_row(row, egress) for row in rows]
    return KeyPage(
        rows=shown,
        total=min(total, COUNT_CAP),
        capped=total > COUNT_CAP,
        next=_cursor_at(query, rows[-1], False) if rows and after_last else None,
        previous=_cursor_at(query, rows[0], True) if rows and before_first else None,
    )


def _row(row: Sequence[Any], egress: Egress | None) -> PageRow:
    shown = listing(row[: len(LISTING_COLUMNS)])
    if shown.error is not None:
        # any other key an upstream echoed is masked too (a token of 20 or more key characters)
        error = _TOKEN.sub(lambda found: mask(found.group()), shown.error)
        cut = error[:ERROR_SHOWN] + "…" if len(error) > ERROR_SHOWN else error
        shown = replace(shown, error=cut)
    secret: str = row[LISTING_COLUMNS.index(keys.c.value)]
    bound = DIRECT if egress is None else egress(shown.provider, secret)
    return PageRow(shown, bound, row[len(LISTING_COLUMNS)])
