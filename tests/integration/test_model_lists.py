"""The Keeper fetches the upstream's model names for providers with a pattern entry, against
the fake upstream over real HTTP, on SQLite and PostgreSQL: what is kept, when it is fetched
again, which key it uses, and what a failure leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import ManualClock, eventually

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.model_lists import FetchError, gemini_page, kept, openai_names
from llmgateway.keeper.run import Keeper
from llmgateway.keeper.summary import ModelListSummary
from llmgateway.keyfiles import run_sync
from llmgateway.store import StatusEvent, Store
from llmgateway.store.model_lists import MAX_NAMES
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream, Upstream

GOOD = "sk-good-0001-abcdefghijkl"
INVALID = "sk-invalid-0001-abcdefghijkl"
UPSTREAM = ["gpt-4.1", "gpt-4.1-mini", "gpt-4o", "o3-mini", "gpt-4.1-nano"]
SYNC_SEC = 300.0


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sessions = HttpUpstream()
    yield sessions
    await sessions.close()


def openai_provider(tmp_path: Path, fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "provider_type": "openai_like",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.openai_base,
        "default_model": "gpt-4.1-mini",
        "models": {
            "gpt-4o": {"endpoint_suffix": "/chat/completions"},
            "gpt-4.1*": {"endpoint_suffix": "/chat/completions"},
        },
        "timeouts": {"connect": 2, "read": 5, "pool": 2},
        **extra,
    }


def gemini_provider(tmp_path: Path, fake: FakeUpstream) -> dict[str, Any]:
    return {
        "provider_type": "gemini",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.gemini_base,
        "default_model": "gemini-2.5-flash",
        "shared_key_status": True,
        "models": {"gemini-*": {"endpoint_suffix": ":generateContent"}},
        "timeouts": {"connect": 2, "read": 5, "pool": 2},
    }


def settings_of(worker: dict[str, Any] | None = None, **providers: dict[str, Any]) -> Settings:
    worker = {"sync_interval_sec": SYNC_SEC, **(worker or {})}
    return Settings.model_validate({"worker": worker, "providers": providers})


async def keeper_for(
    settings: Settings, store: Store, clock: ManualClock, upstream: Upstream
) -> Keeper:
    await run_sync(settings, store)
    return Keeper(settings, store, upstream, clock=clock)


async def stored(store: Store, provider: str = "p1") -> list[str] | None:
    found = await store.model_names([provider])
    return found[provider][1] if provider in found else None


# --- parsing -----------------------------------------------------------------------------------


def test_only_safe_names_are_kept_once_each_and_at_most_ten_thousand() -> None:
    names = ["gpt-4.1", "a/b:c@d+e_f", "gpt-4.1", "bad name", "é", "", "x" * 257, "x" * 256]
    assert kept(names) == ["gpt-4.1", "a/b:c@d+e_f", "x" * 256]
    assert len(kept(f"m{i}" for i in range(MAX_NAMES + 5))) == MAX_NAMES


def test_answers_that_are_not_models_lists_fail() -> None:
    assert openai_names(b'{"data": [{"id": "a"}, {"id": 1}, "b", {"name": "c"}]}') == ["a"]
    page = b'{"models": [{"name": "models/g"}, {"name": "t"}, {}], "nextPageToken": 7}'
    assert gemini_page(page) == (["g", "t"], None)
    assert gemini_page(b'{"models": [], "nextPageToken": "abc"}') == ([], "abc")
    assert gemini_page(b"{}") == ([], None)
    for body in (b"[]", b"not json", b'{"object": "list"}', b'{"data": {"id": "a"}}'):
        with pytest.raises(FetchError):
            openai_names(body)
    with pytest.raises(FetchError):
        gemini_page(b'{"models": "gemini"}')


# --- the Keeper ----------------------------------------------------------------------------------


async def test_the_upstream_names_are_stored_then_fetched_again_each_sync_interval(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    fake.set_models([*UPSTREAM, "gpt-4.1", "bad name", "x" * 300])
    settings = settings_of(p1=openai_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    assert await keeper.fetch_model_lists() == ModelListSummary(changed=1)
    assert await stored(store) == UPSTREAM
    assert fake.calls(GOOD) == 1
    seen = fake.last_request(GOOD)
    assert seen is not None
    assert (seen.method, seen.path) == ("GET", "/v1/models")
    revision = (await store.model_name_revisions())["p1"]

    clock.advance(SYNC_SEC - 1)
    assert await keeper.fetch_model_lists() == ModelListSummary()  # not due yet
    assert fake.calls(GOOD) == 1
    clock.advance(1)
    assert await keeper.fetch_model_lists() == ModelListSummary(unchanged=1)
    assert fake.calls(GOOD) == 2
    assert (await store.model_name_revisions())["p1"] == revision  # gateways re-read nothing

    fake.set_models(UPSTREAM[:2])
    clock.advance(SYNC_SEC)
    assert await keeper.fetch_model_lists() == ModelListSummary(changed=1)
    assert await stored(store) == UPSTREAM[:2]
    assert (await store.model_name_revisions())["p1"] > revision


async def test_a_failed_fetch_keeps_the_last_list_until_the_next_interval(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    fake.set_models(UPSTREAM)
    settings = settings_of(p1=openai_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    await keeper.fetch_model_lists()
    revision = (await store.model_name_revisions())["p1"]
    fake.set_outage(503)
    fake.set_models(["gpt-4.1-new"])
    clock.advance(SYNC_SEC)
    assert await keeper.fetch_model_lists() == ModelListSummary(failed=1)
    assert await stored(store) == UPSTREAM
    assert (await store.model_name_revisions())["p1"] == revision
    fake.clear_outage()
    assert await keeper.fetch_model_lists() == ModelListSummary()  # tried again next time
    clock.advance(SYNC_SEC)
    assert await keeper.fetch_model_lists() == ModelListSummary(changed=1)
    assert await stored(store) == ["gpt-4.1-new"]


async def test_an_answer_over_the_body_limit_fails_the_fetch(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    fake.set_models(UPSTREAM)
    settings = settings_of(p1=openai_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    await keeper.fetch_model_lists()
    fake.set_models(f"gpt-4.1-{i:05d}-{'x' * 200}" for i in range(25_000))  # ~6 MiB
    clock.advance(SYNC_SEC)
    assert await keeper.fetch_model_lists() == ModelListSummary(failed=1)
    assert await stored(store) == UPSTREAM


async def test_a_key_found_invalid_is_never_used_for_the_list(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [INVALID])
    fake.set_models(UPSTREAM)
    settings = settings_of(p1=openai_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    summary = await keeper.probe_round()  # the auth probe finds the key invalid
    assert summary.failed == 2
    assert fake.calls(INVALID) == 1
    assert await keeper.fetch_model_lists() == ModelListSummary(without_key=1)
    assert fake.calls(INVALID) == 1
    assert await stored(store) is None

    write_keys(tmp_path / "keys", [INVALID, GOOD])  # a key comes: fetched at once
    await run_sync(settings, store)
    assert await keeper.fetch_model_lists() == ModelListSummary(changed=1)
    assert (fake.calls(INVALID), fake.calls(GOOD)) == (1, 1)
    assert await stored(store) == UPSTREAM


async def test_a_valid_key_is_preferred_to_an_untested_one(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    first, second = "sk-good-0001-aaaaaaaaaaaa", "sk-good-0002-bbbbbbbbbbbb"
    write_keys(tmp_path / "keys", [first, second])
    settings = settings_of(p1=openai_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    snapshot = await store.snapshot()
    proven = next(r for r in snapshot.keys if r.secret == second)
    await store.apply_events([StatusEvent(proven.key_id, "gpt-4o", KeyStatus.VALID, clock.now)])
    await keeper.fetch_model_lists()
    assert (fake.calls(first), fake.calls(second)) == (0, 1)


async def test_gemini_pages_are_followed_and_the_names_lose_their_prefix(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    good = "AIza-good-0001-abcdefghijkl"
    write_keys(tmp_path / "keys", [good])
    names = [f"gemini-{i:05d}" for i in range(MAX_NAMES + 1500)]
    fake.set_models(names)
    settings = settings_of(g=gemini_provider(tmp_path, fake))
    keeper = await keeper_for(settings, store, clock, upstream)
    assert await keeper.fetch_model_lists() == ModelListSummary(changed=1)
    assert await stored(store, "g") == names[:MAX_NAMES]
    assert fake.calls(good) == MAX_NAMES // 1000  # pages of 1000, no more than needed
    seen = fake.last_request(good)
    assert seen is not None
    assert (seen.path, seen.query) == ("/v1beta/models", {"pageSize": "1000", "pageToken": "9000"})
    assert seen.headers["x-goog-api-key"] == good
    assert fake.key_in_url == 0


async def test_providers_without_a_pattern_are_not_fetched(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    plain = openai_provider(
        tmp_path,
        fake,
        default_model="gpt-4o",
        models={"gpt-4o": {"endpoint_suffix": "/chat/completions"}},
    )
    disabled = openai_provider(tmp_path, fake, enabled=False)
    settings = settings_of(p1=plain, p2=disabled)
    keeper = await keeper_for(settings, store, clock, upstream)
    assert await keeper.fetch_model_lists() == ModelListSummary()
    assert fake.calls(GOOD) == 0


async def test_the_running_keeper_fetches_after_its_first_sync(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    fake.set_models(UPSTREAM)
    settings = settings_of(p1=openai_provider(tmp_path, fake), worker={"watch_files": False})
    keeper = Keeper(settings, store, HttpUpstream(), clock=clock)  # `run` closes its upstream
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))

    async def listed() -> bool:
        return await stored(store) == UPSTREAM

    await eventually(listed)
    stop.set()
    await asyncio.wait_for(task, 10)
