"""What `llmgateway keys disable|enable|reset|recheck` do to the keys a filter selects.

The keys are taken in chunks of `CHUNK` in key order, each chunk found and changed in one short
transaction of its own that resumes after the last key seen (no OFFSET, no cursor held open),
so 100,000 keys never sit in memory and it works the same through a transaction pooler. Every
chunk that changes something takes a new store revision, stamps the status rows it changes
(so each gateway's next delta read sees them) and, on PostgreSQL, announces it.

- `disable` sets `keys.disabled_at`: no gateway selects the key, the Keeper does not probe it,
  and no file sync clears it. `enable` clears it.
- `reset` clears a row's cooldown and failure streak and makes it `untested`, due now.
- `recheck` makes a row due before every other one, so the Keeper probes it first.

Disable and enable act on whole keys (every model of a key that has a matching row); reset and
recheck on the matching (key, model) rows only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an action stands: keys matched and changed so far, status rows changed."""

    matched: int = 0
    changed: int = 0
    rows: int = 0


async def run_action(
    store: Store,
    action: Action,
    chosen: Chosen,
    *,
    chunk: int = CHUNK,
    on_chunk: Callable[[Progress], None] | None = None,
) -> Progress:
    """Do `action` to every key `chosen` selects, `chunk` keys per transaction; `on_chunk`
    hears the running totals after each chunk."""
    done = Progress()
    after = 0
    recheck_at: float | None = None
    if action is Action.RECHECK:
        recheck_at = await _first_in_line(store)
    while True:
        async with store.engine.connect() as conn, conn.begin() as transaction:
            key_ids = await _next_keys(conn, chosen, after, chunk)
            if not key_ids:
                await transaction.rollback()
                break
            revision = await bump_revision(conn)
            now = store.clock()
            changed, rows = await _apply(conn, action, chosen, key_ids, revision, now, recheck_at)
            if changed or rows:
                if action is not Action.RECHECK:
                    await notify.publish(conn, notify.Kind.KEYS, revision)
            else:
                await transaction.rollback()
        done = Progress(done.matched + len(key_ids), done.changed + changed, done.rows + rows)
        if on_chunk is not None:
            on_chunk(done)
        after = key_ids[-1]
        if len(key_ids) < chunk:
            break
    return done


def _by_prefix(prefixes: Sequence[str]) -> list[sa.ColumnElement[bool]]:
    # a range on the indexed digest per prefix ("g" sorts after every hex digit)
    if not prefixes:
        return []
    ranges = [sa.and_(keys.c.digest >= p, keys.c.digest < p + "g") for p in prefixes]
    return [sa.or_(*ranges)]


async def _next_keys(conn: AsyncConnection, chosen: Chosen, after: int, chunk: int) -> list[int]:
    """The next `chunk` ids of chosen keys after key `after`."""
    query = (
        sa.select(key_status.c.key_id)
        .select_from(key_pool)
        .where(*key_conditions(chosen.key_filter), *_by_prefix(chosen.prefixes))
        .where(key_status.c.key_id > after)
        .group_by(key_status.c.key_id)
        .order_by(key_status.c.key_id)
        .limit(chunk)
    )
    return [int(key_id) for key_id in (await conn.execute(query)).scalars()]


def _rows_of(chosen: Chosen, key_ids: Sequence[int]) -> sa.ColumnElement[bool]:
    """The chosen status rows of `key_ids` (filter conditions on the row itself)."""
    matching = (
        sa.select(key_status.c.key_id, key_status.c.model)
        .select_from(key_pool)
        .where(
            key_status.c.key_id.in_(key_ids),
            *key_conditions(chosen.key_filter),
            *_by_prefix(chosen.prefixes),
        )
    )
    return sa.tuple_(key_status.c.key_id, key_status.c.model).in_(matching)


async def _apply(
    conn: AsyncConnection,
    action: Action,
    chosen: Chosen,
    key_ids: list[int],
    revision: int,
    now: float,
    recheck_at: float | None,
) -> tuple[int, int]:
    """Do `action` to `key_ids`; returns (keys changed, status rows changed)."""
    if action in (Action.DISABLE, Action.ENABLE):
        disable = action is Action.DISABLE
        flipped = (
            sa.update(keys)
            .where(
                keys.c.id.in_(key_ids),
                keys.c.disabled_at.is_(None) if disable else keys.c.disabled_at.is_not(None),
            )
            .values(disabled_at=now if disable else None, revision=revision)
            .returning(keys.c.id)
        )
        ids = list((await conn.execute(flipped)).scalars())
        if not ids:
            return 0, 0
        # every row of the key, so that each gateway's next delta adds or drops it
        stamped = await conn.execute(
            sa.update(key_status).where(key_status.c.key_id.in_(ids)).values(revision=revision)
        )
        return len(ids), stamped.rowcount
    if action is Action.RESET:
        values: dict[str, object] = {
            "status": KeyStatus.UNTESTED.value,
            "reason": None,
            "failing_since": None,
            "cooldown_until": None,
            "probe_attempts": 0,
            "next_check_at": now,
            "revision": revision,
        }
    else:
        values = {"next_check_at": now if recheck_at is None else min(now, recheck_at)}
    update = sa.update(key_status).where(_rows_of(chosen, key_ids)).values(**values)
    touched = list((await conn.execute(update.returning(key_status.c.key_id))).scalars())
    return len(set(touched)), len(touched)


async def _first_in_line(store: Store) -> float | None:
    """A due time ahead of every row the Keeper may claim (it claims the soonest first), so
    the rows made due now are probed before the backlog; None when nothing else is due."""
    query = sa.select(sa.func.min(key_status.c.next_check_at)).where(key_status.c.active)
    async with store.engine.connect() as conn:
        soonest = await conn.scalar(query)
    return None if soonest is None else float(soonest) - 1.0
