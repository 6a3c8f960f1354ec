"""Bulk jobs in the store: an action on a set of keys fixed when it is submitted.

`submit` writes the job and its keys in one transaction (one INSERT … SELECT of the ids of the
keys the filter selects at that moment, so a key added later is never touched) and records it in
the audit log. The job is then run a chunk at a time (`llmgateway.store.job_runs`): by the
Keeper's job runner for the console, or at once by the command for `llmgateway keys …`. The
job row holds its progress (keys done of `total`, keys and rows changed), its state
(`queued`, `running`, `done`, `failed`, `cancelled`), when it was submitted, started and
finished, and who submitted it (`Actor`). Nothing here holds a secret. Finished jobs are kept
`worker.job_retention_days`, then purged by the Keeper's upkeep (`purge_finished_before`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.core.outcomes import KeyStatus
from llmgateway.records import Actor, KeyFilter
from llmgateway.store import Store, audit
from llmgateway.store.key_actions import Action, Chosen, chosen_keys, first_in_line
from llmgateway.store.tables import job_keys, jobs


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"  # waiting for a runner
    RUNNING = "running"  # a runner has it (or had it and died: the next one resumes it)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
"""The states a runner may take a job in."""

HOLD_SEC = 30.0
"""How long a runner holds a job past its last chunk before another runner may resume it."""


@dataclass(frozen=True, slots=True)
class Job:
    """One bulk job as stored: `done` of `total` keys so far, `changed` keys and `rows` status
    rows changed; `error` says why a failed job failed."""

    id: int
    action: Action
    chosen: Chosen
    state: JobState
    total: int
    done: int
    changed: int
    rows: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    actor: Actor
    error: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job will not move any more (done, failed or cancelled)."""
        return self.state not in UNFINISHED

    @property
    def percent(self) -> int:
        """How far it got, 0 to 100 (100 for a job with no keys once it is done)."""
        if not self.total:
            return 100 if self.state is JobState.DONE else 0
        return min(100, self.done * 100 // self.total)


async def submit(
    store: Store, action: Action, chosen: Chosen, actor: Actor, *, runner: str | None = None
) -> int:
    """Write a job of `action` on the keys `chosen` selects now, and audit it; its id. With
    `runner` (an owner id) the job is written running, leased to that runner, which is to run
    it at once (`job_runs.run_job`); else it is queued for the Keeper's runner."""
    now = store.clock()
    recheck_at = await first_in_line(store) if action is Action.RECHECK else None
    row: dict[str, Any] = {
        "action": action.value,
        "chosen": chosen_to_json(chosen),
        "state": JobState.QUEUED.value,
        "total": 0,
        "recheck_at": recheck_at,
        "submitted_at": now,
        "actor_session": actor.session,
        "actor_address": actor.address,
        "actor_user_agent": actor.user_agent,
    }
    if runner is not None:
        row |= {
            "state": JobState.RUNNING.value,
            "started_at": now,
            "lease_owner": runner,
            "lease_until": now + HOLD_SEC,
        }
    async with store.engine.begin() as conn:
        job_id = int(
            (await conn.execute(sa.insert(jobs).values(row).returning(jobs.c.id))).scalar_one()
        )
        total = await _fix_keys(conn, job_id, chosen)
        await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(total=total))
    await audit.record(store, actor, action.value, f"{chosen.describe()} (job {job_id})", total)
    return job_id


async def _fix_keys(conn: AsyncConnection, job_id: int, chosen: Chosen) -> int:
    """Write the ids of the keys `chosen` selects as the keys of job `job_id`; how many."""
    ids = chosen_keys(chosen).subquery()
    fixed = sa.insert(job_keys).from_select(
        ["job_id", "key_id"], sa.select(sa.literal(job_id, sa.Integer), ids.c.key_id)
    )
    return int((await conn.execute(fixed)).rowcount)


async def job(store: Store, job_id: int) -> Job | None:
    """Job `job_id` (None: there is none)."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
    return None if row is None else _job(row._mapping)


async def recent_jobs(store: Store, limit: int = 10) -> list[Job]:
    """The `limit` newest jobs, newest first."""
    query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_job(row._mapping) for row in rows]


async def cancel(store: Store, job_id: int) -> bool:
    """Stop job `job_id` where it stands (the chunks done stay done); False when it had
    finished already. Its runner stops before its next chunk."""
    now = store.clock()
    async with store.engine.begin() as conn:
        stopped = await conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in UNFINISHED]))
            .values(
                state=JobState.CANCELLED.value, finished_at=now, lease_owner=None, lease_until=None
            )
        )
        if stopped.rowcount:
            await conn.execute(sa.delete(job_keys).where(job_keys.c.job_id == job_id))
    return bool(stopped.rowcount)


async def purge_finished_before(store: Store, cutoff: float) -> int:
    """Delete the jobs that finished (done, failed or cancelled) before `cutoff` (epoch
    seconds), with any keys left to them; how many jobs were deleted."""
    old = sa.select(jobs.c.id).where(
        jobs.c.state.not_in([state.value for state in UNFINISHED]), jobs.c.finished_at < cutoff
    )
    async with store.engine.begin() as conn:
        # explicitly, not by the foreign key's cascade (a copied database may have it off)
        await conn.execute(sa.delete(job_keys).where(job_keys.c.job_id.in_(old)))
        deleted = await conn.execute(sa.delete(jobs).where(jobs.c.id.in_(old)))
    return max(deleted.rowcount, 0)


def _job(row: Any) -> Job:
    return Job(
        id=row["id"],
        action=Action(row["action"]),
        chosen=chosen_from_json(row["chosen"]),
        state=JobState(row["state"]),
        total=row["total"],
        done=row["done"],
        changed=row["changed"],
        rows=row["row_count"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        actor=Actor(row["actor_session"], row["actor_address"], row["actor_user_agent"]),
        error=row["error"],
    )


def chosen_to_json(chosen: Chosen) -> str:
    """`chosen` as the JSON a job keeps (every field of the filter, sets as sorted lists)."""
    fields_ = {}
    for field in fields(KeyFilter):
        value = getattr(chosen.key_filter, field.name)
        if isinstance(value, frozenset):
            value = sorted(str(item) for item in value)
        fields_[field.name] = value
    return json.dumps({"filter": fields_, "prefixes": list(chosen.prefixes)}, sort_keys=True)


def chosen_from_json(text: str) -> Chosen:
    """The `Chosen` that `chosen_to_json` wrote."""
    found = json.loads(text)
    given = dict(found["filter"])
    given["statuses"] = frozenset(KeyStatus(s) for s in given.get("statuses", ()))
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = frozenset(value)
    return Chosen(KeyFilter(**given), tuple(found["prefixes"]))
