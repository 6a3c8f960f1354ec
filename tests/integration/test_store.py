"""The store on a real SQLite file and the real PostgreSQL (each test runs on both)."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ALL_MODELS, ErrorReason, KeyStatus
from llmgateway.store import (
    KeyRow,
    StatusCount,
    StatusEvent,
    Store,
    SyncChanges,
    UnknownProviderError,
    probes,
    status,
)
from llmgateway.store.connect import head_revision
from llmgateway.store.schema import SCHEMA_HEAD
from llmgateway.store.status import ERROR_MESSAGE_LIMIT
from llmgateway.store.tables import key_status, keys, metadata, provider_models, providers

KEY_A = "sk-test-aaaaaaaaaaaaaaaa0001"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb0002"
KEY_C = "sk-test-cccccccccccccccc0003"


def config(**providers: dict[str, Any]) -> Settings:
    """Settings with the given providers (name → overrides of a minimal openai_like one)."""
    base = {
        "provider_type": "openai_like",
        "keys_path": "/nonexistent",
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": {"m1": {"endpoint_suffix": "/chat/completions"}},
    }
    return Settings.model_validate({"providers": {n: base | o for n, o in providers.items()}})


async def one_provider(store: Store, name: str = "p1") -> None:
    await store.sync_providers(config(**{name: {}}).providers)


def rows(snapshot_keys: list[KeyRow]) -> set[tuple[str, str, str, bool]]:
    return {(r.provider, r.secret, r.model, r.active) for r in snapshot_keys}


async def status_row(store: Store, secret: str, model: str) -> sa.Row[Any]:
    query = (
        sa.select(key_status)
        .join(keys, keys.c.id == key_status.c.key_id)
        .where(keys.c.value == secret, key_status.c.model == model)
    )
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).one()


async def key_id(store: Store, secret: str) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(sa.select(keys.c.id).where(keys.c.value == secret)) or 0)


async def test_upgrade_is_idempotent_and_matches_the_tables(store: Store) -> None:
    assert await store.upgrade() == head_revision() == SCHEMA_HEAD
    assert await store.upgrade() == SCHEMA_HEAD

    def diff(sync: sa.Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(sync), metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert await store.revision() == 0


async def test_upgrade_creates_the_sqlite_folder(tmp_path: Any) -> None:
    path = tmp_path / "deep" / "er" / "gw.db"
    async with await Store.open(f"sqlite:///{path}") as store:
        await store.upgrade()
        async with store.engine.connect() as conn:
            mode = await conn.scalar(sa.text("PRAGMA journal_mode"))
            foreign = await conn.scalar(sa.text("PRAGMA foreign_keys"))
    assert path.exists()
    assert (mode, foreign) == ("wal", 1)


async def test_sync_providers_upserts_and_deactivates_keeping_keys(store: Store) -> None:
    assert await store.sync_providers(config(p1={}, p2={}).providers) == 2
    assert await store.sync_providers(config(p1={}, p2={}).providers) == 0
    await store.sync_keys("p2", {KEY_A}, ["m1"], False)
    revision = await store.revision()

    assert await store.sync_providers(config(p1={}).providers) == 1  # p2 left the config

    assert (await store.snapshot()).keys == []
    delta = await store.snapshot(revision)
    assert rows(delta.keys) == {("p2", KEY_A, "m1", False)}
    async with store.engine.connect() as conn:
        state = dict((await conn.execute(sa.select(providers.c.name, providers.c.active))).all())
        assert await conn.scalar(sa.select(sa.func.count()).select_from(keys)) == 1
    assert state == {"p1": True, "p2": False}

    await store.sync_providers(config(p1={}, p2={"enabled": False}).providers)
    assert (await store.snapshot()).keys == []
    revision = await store.revision()
    assert await store.sync_providers(config(p1={}, p2={}).providers) == 1  # back, keys intact
    assert rows((await store.snapshot(revision)).keys) == {("p2", KEY_A, "m1", True)}


async def test_sync_keys_adds_removes_and_restores(store: Store, clock: Any) -> None:
    await one_provider(store)
    changes = await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    assert changes == SyncChanges(added=2, removed=0, restored=0, active=2)
    first = await status_row(store, KEY_A, "m1")
    assert (first.status, first.next_check_at, first.active) == ("untested", clock.now, True)

    assert await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False) == SyncChanges(active=2)

    clock.advance(10)
    assert await store.sync_keys("p1", {KEY_A}, ["m1"], False) == SyncChanges(removed=1, active=1)
    assert rows((await store.snapshot()).keys) == {("p1", KEY_A, "m1", True)}

    await store.apply_events(
        [StatusEvent(await key_id(store, KEY_B), "m1", KeyStatus.INVALID_KEY, clock.now)]
    )
    clock.advance(10)
    changes = await store.sync_keys("p1", {KEY_A, KEY_B, KEY_C}, ["m1"], False)
    assert changes == SyncChanges(added=1, removed=0, restored=1, active=3)
    restored = await status_row(store, KEY_B, "m1")
    # the status history comes back with the key, and it is due for a check at once
    assert (restored.status, restored.next_check_at) == ("invalid_key", clock.now)
    async with store.engine.connect() as conn:
        removed_at = await conn.scalar(sa.select(keys.c.removed_at).where(keys.c.value == KEY_B))
    assert removed_at is None


async def test_sync_keys_without_prune_only_adds(store: Store) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    changes = await store.sync_keys("p1", {KEY_C}, ["m1"], False, prune=False)
    assert changes == SyncChanges(added=1, active=3)


async def test_sync_keys_of_an_unknown_provider_is_a_clear_error(store: Store) -> None:
    with pytest.raises(UnknownProviderError, match="'nope' is not in the store"):
        await store.sync_keys("nope", {KEY_A}, ["m1"], False)


async def test_status_rows_follow_models_and_shared_status(store: Store) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1", "m2"], False)
    assert {(r.secret, r.model) for r in (await store.snapshot()).keys} == {
        (KEY_A, "m1"),
        (KEY_A, "m2"),
        (KEY_B, "m1"),
        (KEY_B, "m2"),
    }

    revision = await store.revision()
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1", "m2"], True)
    assert rows((await store.snapshot()).keys) == {
        ("p1", KEY_A, ALL_MODELS, True),
        ("p1", KEY_B, ALL_MODELS, True),
    }
    assert {(r.model, r.active) for r in (await store.snapshot(revision)).keys} == {
        ("m1", False),
        ("m2", False),
        (ALL_MODELS, True),
    }

    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m2", "m3"], False)
    models = {(r.secret, r.model) for r in (await store.snapshot()).keys}
    assert models == {(k, m) for k in (KEY_A, KEY_B) for m in ("m2", "m3")}
    counts = await store.status_counts()
    assert {(c.model, c.count) for c in counts} == {("m2", 2), ("m3", 2)}


async def test_snapshot_delta_by_revision(store: Store, clock: Any) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    full = await store.snapshot()
    assert full.revision == await store.revision() > 0
    assert len(full.keys) == 2
    assert (await store.snapshot(full.revision)).keys == []

    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)  # nothing changed
    assert await store.revision() == full.revision

    await store.sync_keys("p1", {KEY_B, KEY_C}, ["m1"], False)
    delta = await store.snapshot(full.revision)
    assert delta.revision > full.revision
    assert rows(delta.keys) == {("p1", KEY_A, "m1", False), ("p1", KEY_C, "m1", True)}
    assert rows((await store.snapshot()).keys) == {
        ("p1", KEY_B, "m1", True),
        ("p1", KEY_C, "m1", True),
    }
    assert "sk-test" not in repr(delta)  # a snapshot can be logged without its secrets


async def test_apply_events_is_idempotent_and_cooldowns_only_move_later(
    store: Store, clock: Any
) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A}, ["m1"], False)
    kid = await key_id(store, KEY_A)
    t = clock.now
    limited = StatusEvent(
        key_id=kid,
        model="m1",
        status=KeyStatus.RATE_LIMITED,
        reason=ErrorReason.RATE_LIMITED,
        cooldown_until=t + 60,
        status_code=429,
        error_message="slow down",
        observed_at=t + 1,
        next_check_at=t + 60,
    )
    await store.apply_events([limited])
    revision = await store.revision()
    await store.apply_events([limited])
    assert (await store.snapshot(revision)).keys == []  # the repeat changed nothing
    row = await status_row(store, KEY_A, "m1")
    assert (row.status, row.cooldown_until, row.failing_since) == ("rate_limited", t + 60, t + 1)

    shorter = StatusEvent(kid, "m1", KeyStatus.RATE_LIMITED, t + 2, cooldown_until=t + 10)
    await store.apply_events([shorter])
    row = await status_row(store, KEY_A, "m1")
    assert (row.cooldown_until, row.last_checked_at, row.failing_since) == (t + 60, t + 2, t + 1)

    longer = StatusEvent(kid, "m1", KeyStatus.RATE_LIMITED, t + 3, cooldown_until=t + 600)
    await store.apply_events([longer])
    assert (await status_row(store, KEY_A, "m1")).cooldown_until == t + 600


async def test_an_older_event_does_not_overwrite_a_newer_state(store: Store, clock: Any) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A}, ["m1"], False)
    kid = await key_id(store, KEY_A)
    t = clock.now
    valid = StatusEvent(kid, "m1", KeyStatus.VALID, t + 5, status_code=200, latency_ms=12.5)
    invalid = StatusEvent(kid, "m1", KeyStatus.INVALID_KEY, t + 3, ErrorReason.INVALID_KEY)
    await store.apply_events([valid])
    await store.apply_events([invalid])
    row = await status_row(store, KEY_A, "m1")
    assert (row.status, row.last_checked_at, row.latency_ms) == ("valid", t + 5, 12.5)

    # within one batch events land in observation order, whatever order they came in
    failing = StatusEvent(kid, "m1", KeyStatus.SERVER_ERROR, t + 7, error_message="x" * 5000)
    healthy = StatusEvent(kid, "m1", KeyStatus.VALID, t + 9)
    await store.apply_events([healthy, failing])
    row = await status_row(store, KEY_A, "m1")
    assert (row.status, row.failing_since, row.last_checked_at) == ("valid", None, t + 9)

    await store.apply_events(
        [StatusEvent(kid, "m1", KeyStatus.SERVER_ERROR, t + 10, error_message="x" * 5000)]
    )
    row = await status_row(store, KEY_A, "m1")
    assert (row.failing_since, len(row.error_message)) == (t + 10, ERROR_MESSAGE_LIMIT)


@pytest.mark.parametrize("bulk", [True, False], ids=["one-statement", "statement-per-event"])
async def test_a_batch_lands_as_its_events_would_one_by_one(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    """Several events per key in one batch (key-level ones among them) end as if each had
    been applied alone, in observation order; SQLite without the one-statement write too."""
    monkeypatch.setattr(status, "SQLITE_BULK", bulk)
    await store.sync_providers(config(p1={}, p2={}).providers)
    secrets = [f"sk-test-batch-{n:04d}-abcdefgh" for n in range(40)]
    await store.sync_keys("p1", set(secrets[:20]), ["m1", "m2"], False)
    await store.sync_keys("p2", set(secrets[20:]), ["m1", "m2"], False)
    batched = [await key_id(store, s) for s in secrets[:20]]
    alone = [await key_id(store, s) for s in secrets[20:]]
    rng = random.Random(7)
    kinds = [KeyStatus.VALID, KeyStatus.RATE_LIMITED, KeyStatus.INVALID_KEY, KeyStatus.NO_QUOTA]
    plan = [
        (
            rng.randrange(20),
            rng.choice(["m1", "m2"]),
            rng.choice(kinds),
            clock.now + rng.uniform(0, 100),
            rng.choice([None, clock.now + rng.uniform(0, 500)]),
        )
        for _ in range(120)
    ]

    def event(ids: list[int], step: tuple[int, str, KeyStatus, float, float | None]) -> StatusEvent:
        n, model, kind, at, until = step
        return StatusEvent(ids[n], model, kind, at, cooldown_until=until, status_code=n)

    await store.apply_events([event(batched, step) for step in plan])
    for step in sorted(plan, key=lambda s: s[3]):
        await store.apply_events([event(alone, step)])

    async def states(group: list[str]) -> list[tuple[Any, ...]]:
        found = []
        for n, secret in enumerate(group):
            for model in ("m1", "m2"):
                row = await status_row(store, secret, model)
                times = (row.cooldown_until, row.last_checked_at, row.failing_since)
                found.append((n, model, row.status, *times, row.status_code))
        return found

    assert await states(secrets[:20]) == await states(secrets[20:])
    assert {s[2] for s in await states(secrets[:20])} >= {"valid", "invalid_key"}


async def test_an_endless_deadline_is_written(store: Store, clock: Any) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    a, b = await key_id(store, KEY_A), await key_id(store, KEY_B)
    await store.apply_events(
        [
            StatusEvent(a, "m1", KeyStatus.NO_QUOTA, clock.now, cooldown_until=math.inf),
            StatusEvent(b, "m1", KeyStatus.VALID, clock.now),
        ]
    )
    assert (await status_row(store, KEY_A, "m1")).cooldown_until == math.inf
    assert (await status_row(store, KEY_B, "m1")).status == "valid"


async def test_concurrent_writers_all_land(store: Store, clock: Any) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B, KEY_C}, ["m1"], False)
    ids = [await key_id(store, k) for k in (KEY_A, KEY_B, KEY_C)]
    before = await store.revision()
    await asyncio.gather(
        *(
            store.apply_events([StatusEvent(i, "m1", KeyStatus.VALID, clock.now + n)])
            for n, i in enumerate(ids, start=1)
        ),
        store.sync_keys("p1", {KEY_A, KEY_B, KEY_C}, ["m1", "m2"], False),
    )
    assert await store.revision() == before + 4
    counts = {(c.model, c.status): c.count for c in await store.status_counts()}
    assert counts == {("m1", "valid"): 3, ("m2", "untested"): 3}


async def test_status_counts_group_and_label_shared(store: Store, clock: Any) -> None:
    settings = config(p1={}, g1={"provider_type": "gemini", "shared_key_status": True})
    await store.sync_providers(settings.providers)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    clock.advance(100)
    await store.sync_keys("g1", {KEY_C, KEY_A}, ["m1"], True)
    kid = await key_id(store, KEY_B)
    await store.apply_events(
        [StatusEvent(kid, "m1", KeyStatus.VALID, clock.now, next_check_at=clock.now + 3600)]
    )
    t = clock.now
    assert await store.status_counts() == [
        StatusCount("g1", "shared", "untested", 2, t),
        StatusCount("p1", "m1", "untested", 1, t - 100),
        StatusCount("p1", "m1", "valid", 1, t + 3600),
    ]


async def test_a_failure_mid_sync_leaves_the_previous_state(store: Store) -> None:
    await one_provider(store)
    await store.sync_keys("p1", {KEY_A, KEY_B}, ["m1"], False)
    before = await store.snapshot()
    # the database refuses status rows of this model: the last statement of a key sync
    poison = "poisoned-model"
    async with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER poison BEFORE INSERT ON key_status "
                    f"WHEN NEW.model = '{poison}' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.model = '{poison}' THEN RAISE EXCEPTION 'poisoned'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER poison BEFORE INSERT ON key_status "
                    "FOR EACH ROW EXECUTE FUNCTION poison()"
                )
            )

    # KEY_C is inserted and KEY_A, KEY_B removed before the status rows fail
    with pytest.raises(sa.exc.DBAPIError, match="poisoned") as failure:
        await store.sync_keys("p1", {KEY_C}, ["m1", poison], False)
    assert KEY_C not in str(failure.value)  # statement parameters are hidden from errors

    after = await store.snapshot()
    assert after.revision == before.revision
    assert rows(after.keys) == rows(before.keys)
    async with store.engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(keys)) == 2


async def test_sync_proxies(store: Store) -> None:
    await one_provider(store)
    one, two = "http://u:secret-pass@10.0.0.1:3128", "socks5://10.0.0.2:1080"
    assert await store.sync_proxies("p1", {one, two}) == SyncChanges(added=2, active=2)
    revision = await store.revision()
    assert await store.sync_proxies("p1", {two}) == SyncChanges(removed=1, active=1)
    snapshot = await store.snapshot()
    assert [(p.url, p.status, p.active) for p in snapshot.proxies] == [
        (two, KeyStatus.UNTESTED, True)
    ]
    assert [(p.url, p.active) for p in (await store.snapshot(revision)).proxies] == [(one, False)]
    assert "secret-pass" not in repr(snapshot)
    assert await store.sync_proxies("p1", {one, two}) == SyncChanges(restored=1, active=2)


async def test_snapshot_pages_stream_the_keys_and_lead_with_the_proxies(store: Store) -> None:
    await one_provider(store)
    secrets = {f"sk-test-paged-{n:04d}-abcdefgh" for n in range(5)}
    await store.sync_keys("p1", secrets, ["m1"], False)
    await store.sync_proxies("p1", {"http://127.0.0.1:3128"})
    pages = [page async for page in store.snapshot_pages(page=2)]
    assert [len(page.keys) for page in pages] == [2, 2, 1]
    assert [len(page.proxies) for page in pages] == [1, 0, 0]
    assert {page.revision for page in pages} == {await store.revision()}
    assert {row.secret for page in pages for row in page.keys} == secrets

    revision = await store.revision()
    empty = [page async for page in store.snapshot_pages(revision, page=2)]
    assert [(page.revision, page.keys, page.proxies) for page in empty] == [(revision, [], [])]


async def test_model_names_round_trip_and_move_the_revision_only_on_change(
    store: Store, clock: Any
) -> None:
    await store.sync_providers(config(p1={}, p2={}).providers)
    assert await store.model_name_revisions() == {}
    names = ["gpt-4.1", "gpt-4.1-mini", "models/x:y@z+1", *(f"m-{i}" for i in range(3000))]
    assert await store.save_model_names("p1", names) is True
    first = await store.revision()
    assert await store.model_name_revisions() == {"p1": first}
    assert await store.model_names(["p1", "p2"]) == {"p1": (first, names)}
    clock.advance(60)
    assert await store.save_model_names("p1", names) is False  # only the fetch time moves
    assert await store.model_name_revisions() == {"p1": first}
    async with store.engine.connect() as conn:
        fetched = await conn.scalar(sa.select(provider_models.c.fetched_at))
    assert fetched == clock.now
    assert await store.save_model_names("p1", names[:2]) is True
    assert await store.save_model_names("p2", []) is True
    revisions = await store.model_name_revisions()
    assert first < revisions["p1"] < revisions["p2"] == await store.revision()
    assert await store.model_names(["p1", "p2", "p3"]) == {
        "p1": (revisions["p1"], names[:2]),
        "p2": (revisions["p2"], []),
    }
    with pytest.raises(UnknownProviderError):
        await store.save_model_names("p3", names)


async def test_usable_key_prefers_valid_and_never_takes_one_found_invalid(
    store: Store, clock: Any
) -> None:
    await one_provider(store)
    assert await probes.usable_key(store, "p1") is None
    await store.sync_keys("p1", {KEY_A, KEY_B, KEY_C}, ["m1", "m2"], False)
    assert await probes.usable_key(store, "p1") == KEY_A  # all untested: the lowest id
    a, b, c = [await key_id(store, k) for k in (KEY_A, KEY_B, KEY_C)]
    t = clock.now
    await store.apply_events(
        [
            StatusEvent(c, "m1", KeyStatus.VALID, t + 1),
            StatusEvent(b, "m2", KeyStatus.VALID, t + 1),
            StatusEvent(b, "m1", KeyStatus.INVALID_KEY, t + 1),
        ]
    )
    assert await probes.usable_key(store, "p1") == KEY_C  # B is valid for m2, but found invalid
    await store.apply_events([StatusEvent(c, "m2", KeyStatus.NO_ACCESS, t + 2)])
    assert await probes.usable_key(store, "p1") == KEY_A  # untested, but never found bad
    await store.apply_events([StatusEvent(a, "m1", KeyStatus.RATE_LIMITED, t + 3)])
    assert await probes.usable_key(store, "p1") == KEY_A  # still untested for m2
    await store.apply_events([StatusEvent(a, "m2", KeyStatus.INVALID_KEY, t + 4)])
    assert await probes.usable_key(store, "p1") is None
