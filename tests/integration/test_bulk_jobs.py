"""Bulk jobs against real stores (SQLite and PostgreSQL): the key set fixed at submission,
exact progress, resumption after a runner dies, one runner per job, cancellation, the Keeper
probing on while a job runs, `worker --once` running the jobs, the purge of finished jobs
after their retention. Times come from the injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.helpers import ManualClock, eventually

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper import upkeep
from llmgateway.keeper.bulk_jobs import JobRunner
from llmgateway.keeper.probes import DAY
from llmgateway.keeper.run import Keeper, run_once
from llmgateway.keeper.summary import MaintenanceSummary, RoundSummary
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint
from llmgateway.records import Actor, KeyFilter, StatusEvent
from llmgateway.store import Store, audit
from llmgateway.store.job_runs import (
    JobLostError,
    claim_next,
    run_action,
    run_chunk,
    run_job,
)
from llmgateway.store.jobs import (
    HOLD_SEC,
    JobState,
    cancel,
    chosen_from_json,
    chosen_to_json,
    job,
    recent_jobs,
    submit,
)
from llmgateway.store.key_actions import Action, Chosen, Progress
from llmgateway.store.tables import job_keys, jobs, key_status, keys
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream

ADMIN = Actor("session-1a2b", "192.0.2.7", "pytest-browser")
OPENAI = Chosen(KeyFilter(provider="openai"))


def settings_for(
    folder: str = "/nonexistent", base: str = "https://api.example.com/v1"
) -> Settings:
    def provider(model: str) -> dict[str, object]:
        return {
            "provider_type": "openai_like",
            "keys_path": folder,
            "api_base_url": base,
            "default_model": model,
            "models": {m: {"endpoint_suffix": "/chat/completions"} for m in ("m1", "m2")},
            "access_control": {"gateway_access_token": "gw-token-openai-0001"},
        }

    return Settings.model_validate({"providers": {"openai": provider("m1")}})


def secrets(count: int, tag: str = "k") -> list[str]:
    return [f"sk-job-{tag}-{i:05d}-abcdefghijklmnop" for i in range(count)]


async def seeded(store: Store, count: int) -> list[str]:
    """`count` keys of provider `openai`, two models each."""
    found = secrets(count)
    await store.sync_providers(settings_for().providers)
    await store.sync_keys("openai", found, ["m1", "m2"], False)
    return found


async def disabled(store: Store) -> set[str]:
    query = sa.select(keys.c.value).where(keys.c.disabled_at.is_not(None))
    async with store.engine.connect() as conn:
        return set((await conn.execute(query)).scalars())


async def left(store: Store, job_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(job_keys).where(job_keys.c.job_id == job_id)
    async with store.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def test_the_key_set_is_fixed_at_submission(store: Store, clock: ManualClock) -> None:
    first = await seeded(store, 30)
    job_id = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    clock.advance(5)
    later = secrets(5, "later")
    await store.sync_keys("openai", first + later, ["m1", "m2"], False)

    submitted = await job(store, job_id)
    assert submitted is not None
    assert (submitted.state, submitted.total, submitted.done) == (JobState.QUEUED, 30, 0)
    assert submitted.actor == ADMIN
    assert await JobRunner(store, "keeper-a", chunk=7).run_pending(asyncio.Event()) == 1

    finished = await job(store, job_id)
    assert finished is not None
    assert (finished.state, finished.total, finished.done) == (JobState.DONE, 30, 30)
    assert (finished.changed, finished.rows, finished.percent) == (30, 60, 100)
    assert finished.submitted_at < finished.finished_at  # type: ignore[operator]
    assert await disabled(store) == set(first)  # the 5 added after it untouched
    assert await left(store, job_id) == 0  # a finished job keeps no key list

    logged = await audit.recent(store)
    assert [(e.action, e.keys, e.session, e.address) for e in logged] == [
        ("disable", 30, "session-1a2b", "192.0.2.7")
    ]
    assert f"job {job_id}" in logged[0].detail
    assert "--provider openai" in logged[0].detail


async def test_progress_is_exact_chunk_by_chunk(store: Store) -> None:
    await seeded(store, 25)
    job_id = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    assert await claim_next(store, "keeper-a") == job_id
    seen: list[tuple[Progress, int]] = []

    def heard(progress: Progress) -> None:
        seen.append((progress, -1))

    done = await run_job(store, job_id, "keeper-a", chunk=10, on_chunk=heard)
    assert done == Progress(25, 25, 50)
    assert [p for p, _ in seen] == [Progress(10, 10, 20), Progress(20, 20, 40), done]

    # the same action again: nothing left to change, and the pool's revision does not move
    revision = await store.revision()
    again = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    assert await claim_next(store, "keeper-a") == again
    assert await run_job(store, again, "keeper-a", chunk=10) == Progress(25, 0, 0)
    assert await store.revision() == revision


async def test_a_job_whose_runner_died_is_resumed_by_the_next_with_exact_counts(
    db_url: str, clock: ManualClock
) -> None:
    first = await Store.open(db_url, clock=clock)
    second = await Store.open(db_url, clock=clock)
    try:
        await first.upgrade()
        await seeded(first, 35)
        job_id = await submit(first, Action.DISABLE, OPENAI, ADMIN)
        assert await claim_next(first, "keeper-a") == job_id
        await run_chunk(first, job_id, "keeper-a", chunk=10)
        await run_chunk(first, job_id, "keeper-a", chunk=10)
        # keeper-a dies here: its lease holds the job until it runs out
        assert await claim_next(second, "keeper-b") is None
        clock.advance(HOLD_SEC + 1)
        assert await claim_next(second, "keeper-b") == job_id
        with pytest.raises(JobLostError):  # had it only been paused, it stops at once
            await run_chunk(first, job_id, "keeper-a", chunk=10)
        done = await run_job(second, job_id, "keeper-b", chunk=10)
        assert done == Progress(35, 35, 70)
        resumed = await job(second, job_id)
        assert resumed is not None
        assert (resumed.state, resumed.done, resumed.changed, resumed.rows) == (
            JobState.DONE,
            35,
            35,
            70,
        )
        assert len(await disabled(second)) == 35
    finally:
        await first.close()
        await second.close()


async def test_a_keeper_that_stops_hands_the_job_over_at_once(store: Store) -> None:
    await seeded(store, 30)
    job_id = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    stop = asyncio.Event()
    assert await claim_next(store, "keeper-a") == job_id

    def stop_after_first(progress: Progress) -> None:
        stop.set()

    assert (
        await run_job(store, job_id, "keeper-a", chunk=10, stop=stop, on_chunk=stop_after_first)
        is None
    )
    paused = await job(store, job_id)
    assert paused is not None
    assert (paused.state, paused.done) == (JobState.RUNNING, 10)
    assert await claim_next(store, "keeper-b") == job_id  # released: no wait for the lease
    assert await run_job(store, job_id, "keeper-b", chunk=10) == Progress(30, 30, 60)


async def test_two_runners_never_hold_one_job(db_url: str, clock: ManualClock) -> None:
    stores = [await Store.open(db_url, clock=clock) for _ in range(4)]
    try:
        await stores[0].upgrade()
        await seeded(stores[0], 20)
        job_id = await submit(stores[0], Action.DISABLE, OPENAI, ADMIN)
        if db_url.startswith("postgresql"):
            taken = await _claims_in_a_race(stores, job_id)
        else:  # one writer at a time: the claims are serial by construction
            taken = [await claim_next(s, f"keeper-{i}") for i, s in enumerate(stores)]
        assert sorted(taken, key=str) == [job_id, None, None, None]
        holder = taken.index(job_id)
        for i, other in enumerate(stores):
            if i != holder:  # a runner that does not hold the job cannot run a chunk of it
                with pytest.raises(JobLostError):
                    await run_chunk(other, job_id, f"keeper-{i}", chunk=5)
        assert await left(stores[0], job_id) == 20
        assert await run_job(stores[holder], job_id, f"keeper-{holder}", chunk=5) == Progress(
            20, 20, 40
        )
    finally:
        for each in stores:
            await each.close()


async def _claims_in_a_race(stores: list[Store], job_id: int) -> list[int | None]:
    """Every store claims the job at once: each has seen it free before any takes it (the job
    row is locked meanwhile), so each one's claim re-checks the row once it gets it."""
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with stores[0].engine.connect() as conn, conn.begin():
        await conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        claims = [
            asyncio.create_task(claim_next(s, f"keeper-{i}")) for i, s in enumerate(stores) if i
        ]

        async def blocked() -> bool:
            async with stores[0].engine.connect() as other:
                return int(await other.scalar(waiting) or 0) >= len(claims)

        await eventually(blocked, what="every claim waiting on the job row")
    return [None, *[await claim for claim in claims]]


async def test_cancel_stops_a_job_where_it_stands(store: Store) -> None:
    await seeded(store, 30)
    job_id = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    assert await claim_next(store, "keeper-a") == job_id
    await run_chunk(store, job_id, "keeper-a", chunk=10)
    assert await cancel(store, job_id)
    with pytest.raises(JobLostError):
        await run_job(store, job_id, "keeper-a", chunk=10)
    stopped = await job(store, job_id)
    assert stopped is not None
    assert (stopped.state, stopped.done, stopped.changed) == (JobState.CANCELLED, 10, 10)
    assert stopped.finished
    assert len(await disabled(store)) == 10
    assert await left(store, job_id) == 0
    assert not await cancel(store, job_id)  # finished already
    assert await claim_next(store, "keeper-b") is None


async def test_reset_and_recheck_jobs_act_on_the_chosen_rows(
    store: Store, clock: ManualClock
) -> None:
    await seeded(store, 4)
    later = clock.now + 3600
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status)
            .where(key_status.c.model == "m2")
            .values(status="rate_limited", cooldown_until=later, next_check_at=later)
        )
    chosen = Chosen(KeyFilter(provider="openai", model="m2"))
    reset = await submit(store, Action.RESET, chosen, ADMIN)
    recheck = await submit(store, Action.RECHECK, Chosen(KeyFilter(model="m1")), ADMIN)
    assert await JobRunner(store, "keeper-a").run_pending(asyncio.Event()) == 2
    async with store.engine.connect() as conn:
        found = (await conn.execute(sa.select(key_status))).mappings().all()
    m2 = [r for r in found if r["model"] == "m2"]
    assert {(r["status"], r["cooldown_until"]) for r in m2} == {("untested", None)}
    m1 = [r for r in found if r["model"] == "m1"]
    assert {r["status"] for r in m1} == {"untested"}
    assert all(r["next_check_at"] <= clock.now for r in m1)
    both = [await job(store, reset), await job(store, recheck)]
    assert [(j.total, j.changed, j.rows) for j in both if j] == [(4, 4, 4), (4, 4, 4)]
    newest = await recent_jobs(store, 1)
    assert [j.id for j in newest] == [recheck]


async def test_a_job_this_version_cannot_read_fails_with_the_reason(store: Store) -> None:
    await seeded(store, 3)
    await submit(store, Action.DISABLE, OPENAI, ADMIN)
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(jobs).values(action="defenestrate"))
    assert await JobRunner(store, "keeper-a").run_pending(asyncio.Event()) == 0
    async with store.engine.connect() as conn:
        state, error = (await conn.execute(sa.select(jobs.c.state, jobs.c.error))).one()
    assert state == "failed"
    assert "defenestrate" in error
    assert await disabled(store) == set()
    assert await claim_next(store, "keeper-b") is None


def test_the_filter_round_trips_through_the_job_row() -> None:
    from llmgateway.core.outcomes import KeyStatus

    chosen = Chosen(
        KeyFilter(
            provider="openai",
            model="m1",
            statuses=frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_QUOTA}),
            disabled=True,
        ),
        ("1a2b", "ffee00"),
    )
    assert chosen_from_json(chosen_to_json(chosen)) == chosen
    assert chosen_from_json(chosen_to_json(Chosen(KeyFilter()))) == Chosen(KeyFilter())


async def test_the_keeper_probes_on_while_a_job_runs(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    probed = secrets(3, "probed")
    bulk = secrets(40, "bulk")
    write_keys(tmp_path / "keys", probed + bulk)
    settings = settings_for(str(tmp_path / "keys"), fake.openai_base)
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"probe_interval_sec": 0.05})}
    )
    await run_sync(settings, store)
    chosen = Chosen(KeyFilter(), tuple(fingerprint(key) for key in bulk))
    job_id = await submit(store, Action.DISABLE, chosen, ADMIN)
    rounds: list[RoundSummary] = []
    midway: list[tuple[JobState, int]] = []

    async def rest(_seconds: float) -> None:
        """Between the job's first two chunks: the Keeper probes meanwhile."""
        if midway:
            return
        now = await job(store, job_id)
        assert now is not None
        midway.append((now.state, now.done))
        await eventually(
            lambda: all(fake.calls(key) > 0 for key in probed), what="the probed keys probed"
        )

    keeper = Keeper(settings, store, HttpUpstream(), clock=clock, job_chunk=10, job_sleep=rest)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop, on_round=rounds.append))
    try:

        async def finished() -> bool:
            found = await job(store, job_id)
            return found is not None and found.state is JobState.DONE

        await eventually(finished, what="the job done")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert midway == [(JobState.RUNNING, 10)]
    assert await disabled(store) == set(bulk)


async def test_the_commands_action_is_a_job_run_at_once_and_audited_as_the_cli(
    store: Store,
) -> None:
    await seeded(store, 12)
    done = await run_action(store, Action.DISABLE, OPENAI, chunk=5)
    assert done == Progress(12, 12, 24)
    [ran] = await recent_jobs(store)
    assert (ran.state, ran.total, ran.actor) == (JobState.DONE, 12, Actor.cli())
    assert await claim_next(store, "keeper-a") is None  # nothing left for the Keeper
    [logged] = await audit.recent(store)
    assert (logged.action, logged.keys, logged.session) == ("disable", 12, "cli")


async def test_a_delta_after_a_disable_carries_every_row_of_its_keys_once(
    store: Store, clock: ManualClock
) -> None:
    found = await seeded(store, 6)
    mark = await store.revision()
    off = Chosen(KeyFilter(), (fingerprint(found[0]), fingerprint(found[1])))
    assert await run_action(store, Action.DISABLE, off) == Progress(2, 2, 4)
    first = next(r.key_id for r in (await store.snapshot(0)).keys if r.secret == found[2])
    clock.advance(1)  # a status row of another key, and of a disabled key, written since
    limited = [StatusEvent(first, "m1", KeyStatus.RATE_LIMITED, clock.now)]
    await store.apply_events(limited)
    delta = await store.snapshot(mark)
    seen = sorted((r.secret, r.model, r.active) for r in delta.keys)
    assert seen == [
        (found[0], "m1", False),
        (found[0], "m2", False),
        (found[1], "m1", False),
        (found[1], "m2", False),
        (found[2], "m1", True),
    ]
    assert await run_action(store, Action.ENABLE, off) == Progress(2, 2, 4)
    again = await store.snapshot(await store.revision() - 1)
    assert sorted((r.secret, r.active) for r in again.keys) == [
        (found[0], True),
        (found[0], True),
        (found[1], True),
        (found[1], True),
    ]


async def test_finished_jobs_are_purged_by_the_upkeep_after_the_retention(
    store: Store, clock: ManualClock
) -> None:
    await seeded(store, 12)
    settings = settings_for()
    done = await submit(store, Action.DISABLE, OPENAI, ADMIN)
    assert await JobRunner(store, "keeper-a", chunk=5).run_pending(asyncio.Event()) == 1
    cancelled = await submit(store, Action.ENABLE, OPENAI, ADMIN)
    assert await cancel(store, cancelled)
    async with store.engine.begin() as conn:  # a key list a finished job kept (an old version)
        await conn.execute(sa.insert(job_keys).values(job_id=done, key_id=1))
    waiting = await submit(store, Action.RESET, OPENAI, ADMIN)  # never run: no keeper came
    assert await upkeep.maintain(settings, store, "keeper-a", clock) == MaintenanceSummary(
        purged=True, vacuumed=True
    )
    assert settings.worker.job_retention_days == 30
    clock.advance(29 * DAY)
    assert (await upkeep.maintain(settings, store, "keeper-a", clock)).purged
    assert [j.id for j in await recent_jobs(store)] == [waiting, cancelled, done]

    clock.advance(2 * DAY)
    assert (await upkeep.maintain(settings, store, "keeper-a", clock)).purged
    assert [j.id for j in await recent_jobs(store)] == [waiting]
    assert await left(store, done) == 0
    assert await left(store, waiting) == 12  # an unfinished job is never purged
    assert await JobRunner(store, "keeper-b").run_pending(asyncio.Event()) == 1


async def test_worker_once_runs_the_submitted_jobs_before_its_probe_round(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    found = secrets(4, "once")
    write_keys(tmp_path / "keys", found)
    settings = settings_for(str(tmp_path / "keys"), fake.openai_base)
    first = await run_once(settings, store, upstream=HttpUpstream(), clock=clock)
    assert (first.jobs, first.round.due, first.round.healthy) == (0, 8, 8)

    recheck = await submit(
        store, Action.RECHECK, Chosen(KeyFilter(), (fingerprint(found[0]),)), ADMIN
    )
    off = await submit(store, Action.DISABLE, Chosen(KeyFilter(), (fingerprint(found[1]),)), ADMIN)
    calls = fake.calls(found[1])
    clock.advance(60)  # a probe result is stored only when newer than the last one
    second = await run_once(settings, store, upstream=HttpUpstream(), clock=clock)
    assert second.jobs == 2
    assert [(j.id, j.state) for j in await recent_jobs(store)] == [
        (off, JobState.DONE),
        (recheck, JobState.DONE),
    ]
    assert (second.round.due, second.round.healthy) == (2, 2)  # the re-checked key, 2 models
    assert await disabled(store) == {found[1]}
    assert fake.calls(found[1]) == calls
