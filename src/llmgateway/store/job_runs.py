"""Running a bulk job: a lease on the job, then its keys a chunk at a time.

`claim_next` takes the oldest unfinished job no live runner holds, with one conditional UPDATE
(atomic on SQLite and PostgreSQL, through a transaction pooler too): of several keepers exactly
one gets it, and a job whose runner died (its lease ran out) is taken again and resumed.
`run_chunk` is one short transaction: it renews the lease (and stops if the lease was lost or
the job cancelled), does the next `chunk` keys after the job's last key done
(`key_actions.apply`), deletes them from the job's keys and moves the job's progress, all or
nothing. So a chunk is done exactly once however often a runner dies, and the counts are exact.

Between chunks the runner rests: on SQLite, whose one writer at a time is shared with the
Keeper's probes and the gateways' status writes, as long as the chunk took (so they always get
in); on PostgreSQL not at all (its row locks queue the writers fairly).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.records import Actor
from llmgateway.store import Store
from llmgateway.store.jobs import HOLD_SEC, UNFINISHED, JobState, chosen_from_json, submit
from llmgateway.store.key_actions import CHUNK, Action, Chosen, Progress, Span, apply
from llmgateway.store.tables import job_keys, jobs

_UNFINISHED = [state.value for state in UNFINISHED]


class JobLostError(RuntimeError):
    """The job was cancelled, or another runner took it over, while this one ran it."""


class UnreadableJobError(ValueError):
    """The job names an action or a filter this version does not know (a newer one wrote it)."""


@dataclass(frozen=True, slots=True)
class Step:
    """Where a job stands after a chunk: its running totals, and whether it is done."""

    progress: Progress
    finished: bool


def runner_id(kind: str) -> str:
    """A lease owner id unique to this runner: what it is, host, pid and a random suffix."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _free(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now)


async def claim_next(store: Store, owner: str, hold: float = HOLD_SEC) -> int | None:
    """Take the oldest unfinished job that no live runner holds, for `owner` until `hold`
    seconds from now; its id (None: there is none)."""
    now = store.clock()
    oldest = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(_UNFINISHED), _free(now))
        .order_by(jobs.c.id)
        .limit(1)
        .scalar_subquery()
    )
    take = (
        sa.update(jobs)
        .where(jobs.c.id == oldest, jobs.c.state.in_(_UNFINISHED), _free(now))
        .values(
            state=JobState.RUNNING.value,
            lease_owner=owner,
            lease_until=now + hold,
            started_at=sa.func.coalesce(jobs.c.started_at, now),
        )
        .returning(jobs.c.id)
    )
    async with store.engine.begin() as conn:
        taken = await conn.scalar(take)
    return None if taken is None else int(taken)


async def run_chunk(
    store: Store, job_id: int, owner: str, chunk: int = CHUNK, hold: float = HOLD_SEC
) -> Step:
    """Do the next `chunk` keys of job `job_id`, which `owner` holds, in one transaction.
    Raises `JobLostError` when `owner` no longer holds it (cancelled, or taken over)."""
    j = jobs.c
    async with store.engine.connect() as conn, conn.begin():
        now = store.clock()
        # first a write: SQLite takes its write lock up front, PostgreSQL locks the job row
        held = (
            await conn.execute(
                sa.update(jobs)
                .where(j.id == job_id, j.lease_owner == owner, j.state == JobState.RUNNING.value)
                .values(lease_until=now + hold)
                .returning(
                    j.action, j.chosen, j.after_key, j.recheck_at, j.done, j.changed, j.row_count
                )
            )
        ).first()
        if held is None:
            raise JobLostError(f"job {job_id} was cancelled or taken over by another runner")
        action, chosen, after, recheck_at, done, changed, rows = held
        what, which = _read(action, chosen)
        count, upto = await _next_chunk(conn, job_id, after, chunk)
        found = (0, 0)
        if count:
            within = sa.select(job_keys.c.key_id).where(
                job_keys.c.job_id == job_id, job_keys.c.key_id > after, job_keys.c.key_id <= upto
            )
            span = Span(within, after, upto)
            found = await apply(conn, what, which, span, now, recheck_at)
            await conn.execute(
                sa.delete(job_keys).where(job_keys.c.job_id == job_id, job_keys.c.key_id <= upto)
            )
        progress = Progress(done + count, changed + found[0], rows + found[1])
        finished = count < chunk
        values: dict[str, object] = {
            "after_key": upto if count else after,
            "done": progress.matched,
            "changed": progress.changed,
            "row_count": progress.rows,
        }
        if finished:
            values |= _ended(JobState.DONE, now)
        await conn.execute(sa.update(jobs).where(j.id == job_id).values(**values))
    return Step(progress, finished)


def _read(action: str, chosen: str) -> tuple[Action, Chosen]:
    try:
        return Action(action), chosen_from_json(chosen)
    except (ValueError, KeyError, TypeError) as error:
        raise UnreadableJobError(f"{type(error).__name__}: {error}") from error


async def _next_chunk(
    conn: AsyncConnection, job_id: int, after: int, chunk: int
) -> tuple[int, int]:
    """How many keys the next chunk of the job has (at most `chunk`), and its last key id."""
    ids = (
        sa.select(job_keys.c.key_id)
        .where(job_keys.c.job_id == job_id, job_keys.c.key_id > after)
        .order_by(job_keys.c.key_id)
        .limit(chunk)
        .subquery()
    )
    count, upto = (await conn.execute(sa.select(sa.func.count(), sa.func.max(ids.c.key_id)))).one()
    return int(count), int(upto or after)


def _ended(state: JobState, now: float) -> dict[str, object]:
    return {"state": state.value, "finished_at": now, "lease_owner": None, "lease_until": None}


async def release(store: Store, job_id: int, owner: str) -> None:
    """End `owner`'s lease on job `job_id`: the next runner resumes it at once."""
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


async def fail(store: Store, job_id: int, owner: str, error: str) -> None:
    """Mark job `job_id`, which `owner` holds, failed because of `error` (no secret in it)."""
    async with store.engine.begin() as conn:
        failed = await conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            .values(error=error[:500], **_ended(JobState.FAILED, store.clock()))
        )
        if failed.rowcount:
            await conn.execute(sa.delete(job_keys).where(job_keys.c.job_id == job_id))


async def run_job(
    store: Store,
    job_id: int,
    owner: str,
    *,
    chunk: int = CHUNK,
    hold: float = HOLD_SEC,
    stop: asyncio.Event | None = None,
    on_chunk: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ticker: Callable[[], float] = time.monotonic,
) -> Progress | None:
    """Run job `job_id`, which `owner` holds, chunk by chunk to its end; its totals. With
    `stop` set it stops between two chunks and releases the job (None: not finished). A job
    this version cannot read (an unknown action) is marked failed; any other error releases
    it and is raised (the next runner resumes it)."""
    resting = store.engine.dialect.name == "sqlite"
    try:
        while True:
            started = ticker()
            try:
                step = await run_chunk(store, job_id, owner, chunk, hold)
            except UnreadableJobError as error:
                await fail(store, job_id, owner, f"unreadable job: {error}")
                raise JobLostError(f"job {job_id} failed: it cannot be read ({error})") from error
            if on_chunk is not None:
                on_chunk(step.progress)
            if step.finished:
                return step.progress
            if stop is not None and stop.is_set():
                await release(store, job_id, owner)
                return None
            await sleep(ticker() - started if resting else 0.0)
    except (Exception, asyncio.CancelledError) as error:
        if not isinstance(error, JobLostError):
            await asyncio.shield(release(store, job_id, owner))
        raise


async def run_action(
    store: Store,
    action: Action,
    chosen: Chosen,
    actor: Actor | None = None,
    *,
    chunk: int = CHUNK,
    on_chunk: Callable[[Progress], None] | None = None,
) -> Progress:
    """Do `action` to the keys `chosen` selects now, here and at once (`llmgateway keys
    disable|…`): a job submitted running (audited as `actor`, the CLI's by default) and run
    to its end by this caller. Should this caller die, the Keeper resumes it."""
    owner = runner_id("cli")
    job_id = await submit(store, action, chosen, actor or Actor.cli(), runner=owner)
    done = await run_job(store, job_id, owner, chunk=chunk, on_chunk=on_chunk)
    assert done is not None  # no stop event: it runs to its end or raises
    return done
