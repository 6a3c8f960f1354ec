"""What `llmgateway keys disable|enable|reset|recheck` (and the console's bulk actions) do to
one chunk of keys.

The keys are fixed when the action is submitted, as a job (`llmgateway.store.jobs`); the job is
run a chunk at a time (`llmgateway.store.job_runs`), each chunk a range `(after, upto]` of key
ids in one short transaction of its own. Here is what a chunk does, and nothing else: every
caller (the CLI, the Keeper's job runner) goes through `apply`. A chunk that changes the pool
takes a new store revision, stamps what it changes (the status rows of a reset; the keys of a
disable or enable, whose rows each gateway's next delta read then takes) and, on PostgreSQL,
announces it.

- `disable` sets `keys.disabled_at`: no gateway selects the key, the Keeper does not probe it,
  and no file sync clears it. `enable` clears it.
- `reset` clears a row's cooldown and failure streak and makes it `untested`, due now.
- `recheck` makes a row due before every other one, so the Keeper probes it first.

Disable and enable act on whole keys; reset and recheck on the rows of the keys that the filter
still selects when the chunk runs (e.g. `--model`, `--status`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import KeyStatus
from llmgateway.records import KeyFilter
from llmgateway.store import Store, notify
from llmgateway.store.key_list import key_conditions, key_pool
from llmgateway.store.status import bump_revision
from llmgateway.store.tables import key_status, keys

CHUNK = 1000
"""Keys per transaction."""


class Action(enum.StrEnum):
    """What is done to the chosen keys."""

    DISABLE = "disable"
    ENABLE = "enable"
    RESET = "reset"
    RECHECK = "recheck"


@dataclass(frozen=True, slots=True)
class Chosen:
    """Which keys an action is for: the rows `key_filter` selects, narrowed (when any are
    given) to the keys whose fingerprint starts with one of `prefixes` (lower-case hex)."""

    key_filter: KeyFilter
    prefixes: tuple[str, ...] = ()

    def describe(self) -> str:
        """The choice in words, as the commands spell it (`every key` when nothing narrows)."""
        words = " ".join([self.key_filter.describe(), *self.prefixes]).strip()
        return words or "every key"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an action stands: keys matched and changed so far, status rows changed."""

    matched: int = 0
    changed: int = 0
    rows: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """One chunk: the key ids `within` selects (a subquery of one column) in `(after, upto]`."""

    within: sa.Select[tuple[int]]
    after: int
    upto: int

    def holds(self, column: sa.ColumnElement[int]) -> list[sa.ColumnElement[bool]]:
        """`column` is a key id of this chunk (the range first: an index seek everywhere)."""
        return [column > self.after, column <= self.upto, column.in_(self.within)]


def chosen_rows(chosen: Chosen) -> list[sa.ColumnElement[bool]]:
    """The conditions (on `key_pool`) selecting the rows `chosen` selects."""
    return [*key_conditions(chosen.key_filter), *_by_prefix(chosen.prefixes)]


def chosen_keys(chosen: Chosen) -> sa.Select[tuple[int]]:
    """The ids of the keys with a row `chosen` selects, each once."""
    return (
        sa.select(key_status.c.key_id)
        .select_from(key_pool)
        .where(*chosen_rows(chosen))
        .group_by(key_status.c.key_id)
    )


def _by_prefix(prefixes: Sequence[str]) -> list[sa.ColumnElement[bool]]:
    # a range on the indexed digest per prefix ("g" sorts after every hex digit)
    if not prefixes:
        return []
    ranges = [sa.and_(keys.c.digest >= p, keys.c.digest < p + "g") for p in prefixes]
    return [sa.or_(*ranges)]


async def apply(
    conn: AsyncConnection,
    action: Action,
    chosen: Chosen,
    span: Span,
    now: float,
    recheck_at: float | None,
) -> tuple[int, int]:
    """Do `action` to the keys of `span`, in the caller's transaction; returns (keys changed,
    status rows changed). A new revision is taken only when the pool changes."""
    if action is Action.RECHECK:
        due = now if recheck_at is None else min(now, recheck_at)
        return await _update_rows(conn, chosen, span, {"next_check_at": due})
    if not await conn.scalar(sa.select(_pending(action, chosen, span))):
        return 0, 0
    revision = await bump_revision(conn)
    if action is Action.RESET:
        changed = await _update_rows(conn, chosen, span, _reset(now, revision))
    else:
        changed = await _flip(conn, action is Action.DISABLE, span, now, revision)
    await notify.publish(conn, notify.Kind.KEYS, revision)
    return changed


def _pending(action: Action, chosen: Chosen, span: Span) -> sa.Exists:
    """Whether `action` has anything to change in `span`."""
    if action is Action.RESET:
        return sa.exists().select_from(key_pool).where(*_rows_of(chosen, span))
    flag = (
        keys.c.disabled_at.is_(None)
        if action is Action.DISABLE
        else keys.c.disabled_at.is_not(None)
    )
    return sa.exists().where(*span.holds(keys.c.id), flag)


def _reset(now: float, revision: int) -> dict[str, object]:
    return {
        "status": KeyStatus.UNTESTED.value,
        "reason": None,
        "failing_since": None,
        "cooldown_until": None,
        "probe_attempts": 0,
        "next_check_at": now,
        "revision": revision,
    }


async def _flip(
    conn: AsyncConnection, disable: bool, span: Span, now: float, revision: int
) -> tuple[int, int]:
    """Disable or enable the keys of `span` that are not so yet, stamping the keys alone:
    a gateway's delta read takes every row of a stamped key (`status.snapshot_pages`), so the
    status rows (and their many indexes) are not rewritten. Returns (keys changed, their
    status rows)."""
    flag = keys.c.disabled_at.is_(None) if disable else keys.c.disabled_at.is_not(None)
    flipped = await conn.execute(
        sa.update(keys)
        .where(*span.holds(keys.c.id), flag)
        .values(disabled_at=now if disable else None, revision=revision)
    )
    if not flipped.rowcount:
        return 0, 0
    # the keys this transaction changed are the ones of the chunk stamped with its revision
    changed = sa.select(keys.c.id).where(
        keys.c.id > span.after, keys.c.id <= span.upto, keys.c.revision == revision
    )
    ks = key_status.c
    rows = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(key_status)
        .where(ks.key_id > span.after, ks.key_id <= span.upto, ks.key_id.in_(changed))
    )
    return flipped.rowcount, int(rows or 0)


def _rows_of(chosen: Chosen, span: Span) -> list[sa.ColumnElement[bool]]:
    """The chosen rows (on `key_pool`) of the keys of `span`."""
    return [*span.holds(key_status.c.key_id), *chosen_rows(chosen)]


async def _update_rows(
    conn: AsyncConnection, chosen: Chosen, span: Span, values: dict[str, object]
) -> tuple[int, int]:
    """Set `values` on the chosen rows of `span`; returns (keys, rows) changed."""
    ks = key_status.c
    matching = sa.select(ks.key_id, ks.model).select_from(key_pool).where(*_rows_of(chosen, span))
    update = (
        sa.update(key_status)
        .where(
            ks.key_id > span.after,
            ks.key_id <= span.upto,
            sa.tuple_(ks.key_id, ks.model).in_(matching),
        )
        .values(**values)
        .returning(ks.key_id)
    )
    touched = list((await conn.execute(update)).scalars())
    return len(set(touched)), len(touched)


async def first_in_line(store: Store) -> float | None:
    """A due time ahead of every row the Keeper may claim (it claims the soonest first), so
    the rows made due now are probed before the backlog; None when nothing else is due."""
    query = sa.select(sa.func.min(key_status.c.next_check_at)).where(key_status.c.active)
    async with store.engine.connect() as conn:
        soonest = await conn.scalar(query)
    return None if soonest is None else float(soonest) - 1.0
