"""The Keeper's maintenance of the store, on schedules kept in the store.

Two tasks: `purge` deletes keys and proxies removed from their files more than
`worker.purge_removed_after_days` ago, the hourly usage counts older than
`worker.usage_retention_days`, the audit log entries older than `worker.audit_retention_days`
and the bulk jobs finished more than `worker.job_retention_days` ago, and runs daily (or
every `purge_removed_after_days` or `usage_retention_days` when that is shorter); `vacuum`
runs VACUUM (SQLite) or VACUUM ANALYZE (PostgreSQL) every `worker.vacuum_interval_hours`.
When each last ran is in the store (`store.keeper_tasks`), so a restart does not start the
count again, a keeper started after a task came due runs it at once, `worker --once` runs
what is due, and of several keepers on one PostgreSQL one runs each due task. A task that
never ran is due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from llmgateway.config.settings import Settings
from llmgateway.core.quota import period_starts
from llmgateway.keeper.probes import DAY, HOUR
from llmgateway.keeper.summary import MaintenanceSummary
from llmgateway.store import Store, audit, jobs, keeper_tasks, maintenance, token_usage, usage

log = logging.getLogger("llmgateway.keeper")

PURGE = "purge"
VACUUM = "vacuum"
TASK_HOLD_SEC = 1 * HOUR
"""How long a keeper holds a task it runs before another keeper may take it (one that died
mid-task is replaced then)."""


@dataclass(frozen=True, slots=True)
class Task:
    """A periodic task: its name in the store and how often it runs, in seconds."""

    name: str
    every: float


def tasks(settings: Settings) -> tuple[Task, Task]:
    """The purge and vacuum tasks with their intervals from `settings`."""
    purge_after = settings.worker.purge_removed_after_days * DAY
    return (
        Task(PURGE, min(DAY, purge_after, settings.worker.usage_retention_days * DAY)),
        Task(VACUUM, settings.worker.vacuum_interval_hours * HOUR),
    )


async def maintain(
    settings: Settings, store: Store, owner: str, clock: Callable[[], float]
) -> MaintenanceSummary:
    """Run each task that is due now (and not held by another keeper), as `owner`."""
    purge, vacuum = tasks(settings)
    keys = proxies = 0
    async with _claimed(store, purge, owner, clock) as purged:
        if purged:
            after_days = settings.worker.purge_removed_after_days
            keys, proxies = await maintenance.purge_removed(store, clock() - after_days * DAY)
            await _purge_history(settings, store, clock)
            log.info(
                "maintenance: purge deleted %d keys and %d proxies removed from their files "
                "more than %g days ago; next purge in %.0f h",
                keys,
                proxies,
                after_days,
                purge.every / HOUR,
            )
    async with _claimed(store, vacuum, owner, clock) as vacuumed:
        if vacuumed:
            started = time.monotonic()
            await maintenance.vacuum(store)
            log.info(
                "maintenance: vacuum done in %.1f s; next vacuum in %.0f h",
                time.monotonic() - started,
                vacuum.every / HOUR,
            )
    return MaintenanceSummary(purged, keys, proxies, vacuumed)


async def _purge_history(settings: Settings, store: Store, clock: Callable[[], float]) -> None:
    """Delete what is kept for a while only: the hourly usage counts older than
    `worker.usage_retention_days` (the token counts not before the current quota periods
    began: a month's quota is summed from them), the audit log entries older than
    `audit_retention_days`, the bulk jobs finished more than `job_retention_days` ago."""
    worker = settings.worker
    now = clock()
    periods = (now - min(period_starts(now, settings.usage.zone()).values())) / DAY
    kept = (
        (usage.purge_before, worker.usage_retention_days, "hourly usage counts"),
        (
            token_usage.purge_before,
            max(worker.usage_retention_days, periods),
            "hourly token counts",
        ),
        (audit.purge_before, worker.audit_retention_days, "audit log entries"),
        (jobs.purge_finished_before, worker.job_retention_days, "finished bulk jobs"),
    )
    for purge_before, kept_days, what in kept:
        rows = await purge_before(store, now - kept_days * DAY)
        if rows:
            log.info("maintenance: purge deleted %d %s older than %g days", rows, what, kept_days)


async def next_due(settings: Settings, store: Store) -> float | None:
    """When the next task comes due (epoch seconds; in the past: due now), or None when a
    task never ran."""
    rows = await keeper_tasks.read(store)
    times: list[float] = []
    for task in tasks(settings):
        row = rows.get(task.name)
        if row is None or row.last_run_at is None:
            return None
        due = row.last_run_at + task.every
        times.append(max(due, row.lease_until or due))
    return min(times)


@contextlib.asynccontextmanager
async def _claimed(
    store: Store, task: Task, owner: str, clock: Callable[[], float]
) -> AsyncIterator[bool]:
    """Whether this keeper claimed `task` (due, and no other keeper holds it). The run is
    recorded when the block ends, or the task released (still due) when it fails."""
    if not await keeper_tasks.claim(store, task.name, owner, clock(), task.every, TASK_HOLD_SEC):
        yield False
        return
    try:
        yield True
    except BaseException:
        await asyncio.shield(keeper_tasks.release(store, task.name, owner))
        raise
    await keeper_tasks.finish(store, task.name, owner, clock())
