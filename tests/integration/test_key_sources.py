"""Where each key is (`file:line`), kept by the sync and by migration 0008, and the WARNING a
key taken out of service gets: once per change, through the gateway's write-behind writer and
the Keeper's probe result writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.helpers import ManualClock, libpq_dsn
from tests.upgrade.original_db import Provider, fill

from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ErrorReason, KeyStatus
from llmgateway.core.pool_keys import StatusChange
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import digest, fingerprint, mask
from llmgateway.store import Adoption, Store
from llmgateway.store import probes as queries
from llmgateway.store.connect import _alembic_config
from llmgateway.store.key_list import by_fingerprint
from llmgateway.store.probes import ProbeResult
from llmgateway.store.schema import SCHEMA_HEAD
from llmgateway.store.tables import keys

KEYS = [f"sk-src-{i:04d}-abcdefghijklmnop" for i in range(4)]
MODELS = ("m1", "m2")


def settings(folder: Path) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(folder),
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": {m: {"endpoint_suffix": "/chat/completions"} for m in MODELS},
        "access_control": {"gateway_access_token": "gw-token-sources-0001"},
    }
    return Settings.model_validate({"providers": {"p1": provider}})


async def sources(store: Store) -> dict[str, str | None]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(keys.c.value, keys.c.source))
        return dict(rows.all())


async def key_ids(store: Store) -> dict[str, int]:
    return {row.secret: row.key_id for row in (await store.snapshot()).keys}


async def test_the_sync_records_and_moves_file_and_line(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "a.txt").write_text(f"# comment\n{KEYS[0]}, {KEYS[1]}\n\n{KEYS[2]}\n")
    (folder / "b.txt").write_text(f"{KEYS[2]}\n{KEYS[3]}\n")  # KEYS[2] again: a.txt wins
    config = settings(folder)
    report = await run_sync(config, store)
    assert report.providers[0].keys is not None
    assert report.providers[0].keys.moved == 0
    assert await sources(store) == {
        KEYS[0]: f"{folder / 'a.txt'}:2",
        KEYS[1]: f"{folder / 'a.txt'}:2",
        KEYS[2]: f"{folder / 'a.txt'}:4",
        KEYS[3]: f"{folder / 'b.txt'}:2",
    }
    revision = await store.revision()
    assert (await run_sync(config, store)).providers[0].keys.moved == 0  # type: ignore[union-attr]
    assert await store.revision() == revision  # nothing to write: rolled back

    (folder / "a.txt").write_text(f"{KEYS[0]}\n{KEYS[1]}\n")  # KEYS[2] now only in b.txt
    report = await run_sync(config, store)
    assert report.providers[0].keys is not None
    assert report.providers[0].keys.moved == 2
    assert (await sources(store))[KEYS[1]] == f"{folder / 'a.txt'}:2"
    assert (await sources(store))[KEYS[2]] == f"{folder / 'b.txt'}:1"
    assert (await sources(store))[KEYS[0]] == f"{folder / 'a.txt'}:1"
    async with store.engine.connect() as conn:
        digests = dict((await conn.execute(sa.select(keys.c.value, keys.c.digest))).all())
    assert digests == {key: digest(key) for key in KEYS}


async def _synced(store: Store, tmp_path: Path) -> dict[str, int]:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "keys.txt").write_text("\n".join(KEYS) + "\n")
    await run_sync(settings(folder), store)
    return await key_ids(store)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmgateway.keys"]


def _result(key_id: int, model: str, status: KeyStatus, at: float, **extra: Any) -> ProbeResult:
    healthy = status is KeyStatus.VALID
    return ProbeResult(
        key_id=key_id,
        model=model,
        observed_at=at,
        marks=True,
        status=status,
        reason=None if healthy else ErrorReason(status.value),
        failing_since=None if healthy else at,
        next_check_at=at + 3600,
        attempts=0,
        **extra,
    )


async def _probe(store: Store, clock: ManualClock, results: list[ProbeResult]) -> None:
    """Write results the way a probe round does: claim the due rows, write, release."""
    await queries.claim_due(store, "keeper-1", clock.now, clock.now + 600, 1000)
    await queries.write_results(store, "keeper-1", results)


async def test_a_key_going_out_of_service_is_logged_once_per_change(
    store: Store, tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await _synced(store, tmp_path)
    where = f"{tmp_path / 'keys' / 'keys.txt'}"
    writer = StatusWriter(store.apply_events)
    caplog.set_level(logging.WARNING, "llmgateway.keys")

    def offer(key: str, model: str, status: KeyStatus, code: int) -> None:
        change = StatusChange(ids[key], model, status, ErrorReason(status.value), None, code)
        writer.offer("p1", change, clock.now)

    # the gateway finds KEYS[0] invalid: one line, for every model of the key
    clock.advance(1)
    offer(KEYS[0], "m1", KeyStatus.INVALID_KEY, 401)
    await writer.flush()
    assert _warnings(caplog) == [
        f"key {mask(KEYS[0])} (fingerprint {fingerprint(KEYS[0])}) of p1 at {where}:1 is now "
        "invalid_key for m1, m2, upstream 401"
    ]
    # the same finding again (another request, the Keeper's confirmation): no new line
    clock.advance(1)
    offer(KEYS[0], "m2", KeyStatus.INVALID_KEY, 401)
    await writer.flush()
    clock.advance(1)
    await _probe(
        store, clock, [_result(ids[KEYS[0]], m, KeyStatus.INVALID_KEY, clock.now) for m in MODELS]
    )
    assert len(_warnings(caplog)) == 1

    # the Keeper finds KEYS[1] out of quota for m2 only; a rate limit is not logged
    clock.advance(1)
    await _probe(
        store,
        clock,
        [
            _result(ids[KEYS[1]], "m2", KeyStatus.NO_QUOTA, clock.now, status_code=429),
            _result(ids[KEYS[2]], "m1", KeyStatus.RATE_LIMITED, clock.now, status_code=429),
        ],
    )
    assert _warnings(caplog)[1:] == [
        f"key {mask(KEYS[1])} (fingerprint {fingerprint(KEYS[1])}) of p1 at {where}:2 is now "
        "no_quota for m2, upstream 429"
    ]
    # a finding older than what the row holds is not written, so not logged either
    stale = StatusChange(ids[KEYS[3]], "m1", KeyStatus.NO_ACCESS, ErrorReason.NO_ACCESS, None, 403)
    clock.advance(1)
    await _probe(
        store, clock, [_result(ids[KEYS[3]], m, KeyStatus.VALID, clock.now) for m in MODELS]
    )
    writer.offer("p1", stale, clock.now - 5)
    await writer.flush()
    assert len(_warnings(caplog)) == 2

    # KEYS[0] recovers, then fails again: a new change, a new line
    clock.advance(1)
    await _probe(
        store, clock, [_result(ids[KEYS[0]], m, KeyStatus.VALID, clock.now) for m in MODELS]
    )
    clock.advance(1)
    offer(KEYS[0], "m1", KeyStatus.NO_ACCESS, 403)
    await writer.flush()
    assert _warnings(caplog)[2:] == [
        f"key {mask(KEYS[0])} (fingerprint {fingerprint(KEYS[0])}) of p1 at {where}:1 is now "
        "no_access for m1, m2, upstream 403"
    ]
    assert all(key not in "\n".join(caplog.messages) for key in KEYS)


async def test_past_the_budget_one_summary_line(
    store: Store, tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    many = [f"sk-many-{i:04d}-abcdefghijklmnop" for i in range(104)]
    (folder / "keys.txt").write_text("\n".join(many) + "\n")
    await run_sync(settings(folder), store)
    ids = await key_ids(store)
    caplog.set_level(logging.WARNING, "llmgateway.keys")
    clock.advance(1)
    await _probe(
        store, clock, [_result(ids[k], "m1", KeyStatus.INVALID_KEY, clock.now) for k in many]
    )
    assert len(_warnings(caplog)) == 100
    clock.advance(59)
    store.turns.flush()
    assert len(_warnings(caplog)) == 100
    clock.advance(1)
    store.turns.flush()
    assert _warnings(caplog)[100:] == [
        "4 more keys went out of service in the last 60s than were logged one by one "
        "(4 invalid_key); `llmgateway keys list --status STATUS` lists them"
    ]


async def test_migration_0008_on_an_existing_database(db_url: str, tmp_path: Path) -> None:
    """A database at 0007 with keys: 0008 adds the digests at once (so `keys show` finds the
    keys) and leaves file:line empty until the next sync records it."""
    async with await Store.open(db_url) as store:
        from alembic import command

        def to_0007(sync: sa.Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = sync
            command.upgrade(config, "0007")

        if db_url.startswith("sqlite"):
            Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        async with store.engine.begin() as conn:
            await conn.run_sync(to_0007)
            await conn.execute(
                sa.text(
                    "INSERT INTO providers (id, name, provider_type, active, created_at, "
                    "updated_at, revision) VALUES (1, 'p1', 'openai_like', true, 0, 0, 0)"
                )
            )
            for n, key in enumerate(KEYS, start=1):
                await conn.execute(
                    sa.text(
                        "INSERT INTO keys (id, provider_id, value, active, added_at, revision) "
                        "VALUES (:id, 1, :value, true, 0, 0)"
                    ),
                    {"id": n, "value": key},
                )
        assert await store.upgrade() == SCHEMA_HEAD
        assert await sources(store) == dict.fromkeys(KEYS)
        found, total = await by_fingerprint(store, fingerprint(KEYS[2])[:6])
        assert total == 1
        assert found == []  # no status rows until the sync: nothing to show yet

        folder = tmp_path / "keys"
        folder.mkdir()
        (folder / "keys.txt").write_text("\n".join(KEYS) + "\n")
        report = await run_sync(settings(folder), store)
        assert report.providers[0].keys is not None
        assert report.providers[0].keys.moved == 0  # recorded, not moved
        assert await sources(store) == {
            k: f"{folder / 'keys.txt'}:{n}" for n, k in enumerate(KEYS, 1)
        }
        found, _ = await by_fingerprint(store, fingerprint(KEYS[2]))
        assert [(r.source, r.model) for r in found[0]] == [
            (f"{folder / 'keys.txt'}:3", m) for m in MODELS
        ]


@pytest.mark.postgres
async def test_an_imported_original_database_has_digests_and_no_source_until_a_sync(
    pg_database: str, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    await fill(libpq_dsn(pg_database), [Provider("p1", "sk-orig-p1-", 3, ("m1",))], now)
    originals = [f"sk-orig-p1-{n:06d}" for n in range(3)]
    async with await Store.open(pg_database) as store:
        await store.migrate(Adoption({"p1": ("openai_like", True)}))
        assert await sources(store) == dict.fromkeys(originals)
        found, total = await by_fingerprint(store, fingerprint(originals[1]))
        assert total == 1
        assert found[0][0].source is None
        assert found[0][0].masked == mask(originals[1])
        folder = tmp_path / "keys"
        folder.mkdir()
        (folder / "keys.txt").write_text("\n".join(originals) + "\n")
        await run_sync(settings(folder), store)
        assert (await sources(store))[originals[1]] == f"{folder / 'keys.txt'}:2"
