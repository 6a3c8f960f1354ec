"""The Keeper's bulk job runner: takes the queued jobs (the console's bulk actions) and the
jobs whose runner died, one at a time, and runs each to its end in chunks
(`llmgateway.store.job_runs`), beside the probing: every chunk is a short transaction of its
own and the runner rests between two (see `job_runs`), so probes and gateways keep writing.
Several keepers on one PostgreSQL database share the jobs; none runs a job another one holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llmgateway.store import Store
from llmgateway.store.job_runs import JobLostError, claim_next, run_job
from llmgateway.store.jobs import HOLD_SEC, job
from llmgateway.store.key_actions import CHUNK

log = logging.getLogger("llmgateway.keeper")

POLL_SEC = 1.0
"""How often an idle runner looks for a submitted job."""


@dataclass(frozen=True, slots=True)
class JobRunner:
    """Runs the store's unfinished jobs as `owner`: `chunk` keys per transaction, each job
    held `hold` seconds past its last chunk; `sleep` is the rest between chunks."""

    store: Store
    owner: str
    chunk: int = CHUNK
    hold: float = HOLD_SEC
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run_pending(self, stop: asyncio.Event) -> int:
        """Run jobs until none is left to take (or `stop` is set: the job in hand is left
        for the next runner, released); how many it finished."""
        finished = 0
        while not stop.is_set():
            job_id = await claim_next(self.store, self.owner, self.hold)
            if job_id is None:
                break
            finished += await self._run(job_id, stop)
        return finished

    async def _run(self, job_id: int, stop: asyncio.Event) -> int:
        found = None
        with contextlib.suppress(ValueError, KeyError, TypeError):  # unreadable: run_job says
            found = await job(self.store, job_id)
        if found is not None:
            log.info(
                "bulk job %d: %s of %s (%d keys, %d done), submitted by %s",
                job_id,
                found.action.value,
                found.chosen.describe(),
                found.total,
                found.done,
                found.actor.session,
            )
        try:
            done = await run_job(
                self.store,
                job_id,
                self.owner,
                chunk=self.chunk,
                hold=self.hold,
                stop=stop,
                sleep=self.sleep,
            )
        except JobLostError as error:
            log.warning("bulk job %d: %s", job_id, error)
            return 0
        if done is None:
            log.info("bulk job %d: stopped, left for the next keeper to resume", job_id)
            return 0
        log.info(
            "bulk job %d: done, %d of %d keys changed (%d rows)",
            job_id,
            done.changed,
            done.matched,
            done.rows,
        )
        return 1
