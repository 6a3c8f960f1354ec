"""The Keeper on an Anthropic provider, against the fake upstream's Messages API over real HTTP,
on SQLite and PostgreSQL: untested keys are first checked with the free models list (x-api-key),
then probed with one token at most; Anthropic's errors mark the keys they name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.helpers import ManualClock
from tests.integration.test_keeper import keeper_for, row, rows

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.probes import HOUR
from llmgateway.store import Store
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.transport.upstream import HttpUpstream, Upstream

GOOD = "sk-ant-good-0001-abcdefghijkl"
INVALID = "sk-ant-invalid-0001-abcdefgh"
NOQUOTA = "sk-ant-noquota-0001-abcdefgh"
LIMITED = "sk-ant-limited-0001-abcdefgh"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sessions = HttpUpstream()
    yield sessions
    await sessions.close()


def config(tmp_path: Path, fake: FakeUpstream, *, shared: bool, **model: Any) -> Settings:
    provider = {
        "provider_type": "anthropic",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.anthropic_base,
        "default_model": MODELS[0],
        "shared_key_status": shared,
        "models": {m: {"endpoint_suffix": "/messages", **model} for m in MODELS},
        "timeouts": {"connect": 2, "read": 5, "pool": 2},
        "worker_health_policy": {"batch_delay_sec": 0},
    }
    return Settings.model_validate({"providers": {"claude": provider}})


async def test_a_round_marks_anthropic_keys_by_their_answers(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD, INVALID, NOQUOTA, LIMITED])
    fake.set_behavior(LIMITED, Behavior(rate_limited=True, retry_after=5.0))
    keeper = await keeper_for(config(tmp_path, fake, shared=True), store, clock, upstream)

    summary = await keeper.probe_round()

    assert (summary.due, summary.healthy, summary.failed, summary.verifying) == (4, 1, 2, 1)
    assert (await row(store, GOOD))["status"] == KeyStatus.VALID
    invalid = await row(store, INVALID)
    assert invalid["status"] == KeyStatus.INVALID_KEY
    assert fake.calls(INVALID) == 1  # the free models list proved it: no generation spent
    listed = fake.last_request(INVALID)
    assert listed is not None
    assert (listed.method, listed.path) == ("GET", "/v1/models")
    assert listed.headers["x-api-key"] == INVALID
    assert listed.headers["anthropic-version"] == "2023-06-01"
    # out of credit: Anthropic's 400 "credit balance is too low"
    assert (await row(store, NOQUOTA))["status"] == KeyStatus.NO_QUOTA
    assert (await row(store, LIMITED))["status"] == KeyStatus.UNTESTED  # verified first
    assert fake.calls(GOOD) == 2  # models list, then one generation probe
    probe = fake.last_request(GOOD)
    assert probe is not None
    assert (probe.method, probe.path) == ("POST", "/v1/messages")
    sent = orjson.loads(probe.body)
    assert sent["max_tokens"] == 1
    assert sent["model"] == MODELS[0]


@pytest.mark.parametrize(("shared", "first", "later"), [(True, 2, 1), (False, 3, 2)])
async def test_shared_key_status_probes_an_anthropic_key_once_per_round(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    shared: bool,
    first: int,
    later: int,
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    keeper = await keeper_for(config(tmp_path, fake, shared=shared), store, clock, upstream)
    await keeper.probe_round()
    assert fake.calls(GOOD) == first
    clock.advance(1 * HOUR)
    await keeper.probe_round()
    assert fake.calls(GOOD) == first + later
    assert {r["status"] for r in (await rows(store)).values()} == {KeyStatus.VALID}


async def test_the_probe_payload_is_configurable(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    payload = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 2}
    write_keys(tmp_path / "keys", [GOOD])
    settings = config(tmp_path, fake, shared=True, test_payload=payload)
    keeper = await keeper_for(settings, store, clock, upstream)
    await keeper.probe_round()
    probe = fake.last_request(GOOD)
    assert probe is not None
    assert orjson.loads(probe.body) == {**payload, "model": MODELS[0]}


async def test_an_overloaded_anthropic_is_not_the_keys_fault(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD])
    keeper = await keeper_for(config(tmp_path, fake, shared=True), store, clock, upstream)
    await keeper.probe_round()
    fake.set_outage(529)
    clock.advance(1 * HOUR)
    await keeper.probe_round()
    state = await row(store, GOOD)
    assert state["status"] == KeyStatus.VALID  # still valid: being verified, never condemned
    assert state["probe_attempts"] == 1
