"""The Keeper's file watcher and key folders that do not exist when it starts: a folder created
later is synced within moments of appearing, and watched from then on, not left for the next
`sync_interval_sec` (an hour here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from tests.helpers import ManualClock, eventually

from llmgateway.config.settings import Settings
from llmgateway.keeper.run import Keeper
from llmgateway.keeper.watch import watch_targets
from llmgateway.store import Store
from llmgateway.store.tables import keys
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream

EARLY = ["sk-good-early-000000000001"]
LATE = ["sk-good-late-0000000000001", "sk-good-late-0000000000002"]
LATER = "sk-good-later-00000000001"


def settings_for(tmp_path: Path, fake: FakeUpstream) -> Settings:
    def provider(folder: Path) -> dict[str, object]:
        return {
            "provider_type": "openai_like",
            "keys_path": str(folder),
            "api_base_url": fake.openai_base,
            "default_model": "gpt-4o-mini",
            "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
            "access_control": {"gateway_access_token": f"tok-{folder.name}-0123456789"},
        }

    return Settings.model_validate(
        {
            "worker": {"sync_interval_sec": 3600, "probe_interval_sec": 3600, "metrics_port": 0},
            "providers": {
                "early": provider(tmp_path / "keys" / "early"),
                # neither the folder nor its parent exists yet
                "late": provider(tmp_path / "more" / "keys" / "late"),
            },
        }
    )


async def active_keys(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        found = await conn.execute(sa.select(keys.c.value).where(keys.c.active))
    return set(found.scalars())


async def test_a_key_folder_created_after_start_is_synced_and_watched(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys" / "early", EARLY)
    settings = settings_for(tmp_path, fake)
    stop = asyncio.Event()
    keeper = Keeper(settings, store, HttpUpstream(), clock=clock)
    task = asyncio.create_task(keeper.run(stop))
    try:
        # the first sync is done, so the watch is set (on tmp_path, the nearest parent that
        # exists): the keeper's watching starts before its first store write
        await eventually(lambda: _has(store, EARLY), within=10, step=0.05)
        late = tmp_path / "more" / "keys" / "late"
        write_keys(late, LATE)  # mkdir -p, then the file
        # the next interval sync is an hour away
        await eventually(lambda: _has(store, EARLY + LATE), within=5, step=0.05)
        # and the new folder is watched from now on
        (late / "more.txt").write_text(LATER + "\n")
        await eventually(lambda: _has(store, [*EARLY, *LATE, LATER]), within=5, step=0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _has(store: Store, expected: list[str]) -> bool:
    return await active_keys(store) == set(expected)


def test_a_missing_folder_is_watched_through_its_nearest_parent(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    present = tmp_path / "keys" / "openai"
    present.mkdir(parents=True)
    missing = tmp_path / "keys" / "gemini" / "deeper"
    assert watch_targets([present, missing]) == {str(present), str(tmp_path / "keys")}
    (tmp_path / "keys" / "gemini").mkdir()
    assert watch_targets([present, missing]) == {str(present), str(tmp_path / "keys" / "gemini")}
