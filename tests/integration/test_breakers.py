"""Breakers through the store: gateways report states and act on `llmgateway breaker reset`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml
from tests.helpers import ManualClock, run_cli

from llmgateway.conductor.breaker_board import BreakerBoard
from llmgateway.config.settings import BreakerMode, CircuitBreakerSettings, EgressRateLimit
from llmgateway.core.guard import Guard
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.resilience import BreakerState
from llmgateway.store import Store, audit

DOWN = Outcome(ErrorReason.SERVER_ERROR, Blame.PROVIDER, 500)


def manual_guard(name: str) -> Guard:
    settings = CircuitBreakerSettings(
        enabled=True, mode=BreakerMode.MANUAL_RESET, failure_threshold=1
    )
    return Guard(name, settings, EgressRateLimit(), random.Random(0))


def state_of(guard: Guard) -> BreakerState:
    """The state now, read through a call: mypy would keep an asserted `.state` narrowed
    across the calls that change it."""
    return guard.state


def open_it(guard: Guard, now: float) -> None:
    assert guard.admit(now) is None
    assert guard.egress_blocked("direct", now) is None
    guard.judge("direct", 1, DOWN, now)
    assert state_of(guard) is BreakerState.OPEN


async def test_gateways_report_states_and_apply_only_new_resets(
    store: Store, clock: ManualClock
) -> None:
    await store.request_breaker_reset("a")  # before the gateway started: nothing to do
    guards = {"a": manual_guard("a"), "b": manual_guard("b")}
    open_it(guards["a"], clock.now)
    board = BreakerBoard()
    await board.exchange(store, guards, clock.now)
    assert state_of(guards["a"]) is BreakerState.OPEN
    rows = {row.provider: row for row in await store.breakers()}
    assert (rows["a"].state, rows["b"].state) == (2, 0)
    assert rows["a"].changed_at == clock.now

    clock.advance(5)
    await board.exchange(store, guards, clock.now)
    assert (await store.breakers())[0].changed_at == clock.now - 5  # unchanged: not rewritten

    await store.request_breaker_reset("a")
    await board.exchange(store, guards, clock.now)
    assert state_of(guards["a"]) is BreakerState.CLOSED
    rows = {row.provider: row for row in await store.breakers()}
    assert rows["a"].state == 0
    assert rows["a"].reset_at == clock.now
    open_it(guards["a"], clock.now)
    await board.exchange(store, guards, clock.now)  # the same request is not applied twice
    assert state_of(guards["a"]) is BreakerState.OPEN


async def test_the_change_time_moves_only_when_the_stored_state_changes(
    store: Store, clock: ManualClock
) -> None:
    guards = {"a": manual_guard("a")}
    await BreakerBoard().exchange(store, guards, clock.now)
    started = clock.now
    clock.advance(60)  # a gateway restarts, or another starts, and reports the same state
    await BreakerBoard().exchange(store, guards, clock.now)
    assert (await store.breakers())[0].changed_at == started

    clock.advance(10)
    open_it(guards["a"], clock.now)
    await BreakerBoard().exchange(store, guards, clock.now)
    row = (await store.breakers())[0]
    assert (row.state, row.changed_at) == (2, clock.now)
    clock.advance(5)
    await store.save_breakers({"a": (2, 1)})  # an egress breaker opened too: a change
    assert (await store.breakers())[0].changed_at == clock.now
    clock.advance(5)
    await store.save_breakers({"a": (2, 1)})
    assert (await store.breakers())[0].changed_at == clock.now - 5


async def test_breaker_reset_command_and_status_table(tmp_path: Path) -> None:
    database = tmp_path / "gw.db"
    (tmp_path / "keys").mkdir()
    document = {
        "database": {"url": f"sqlite:///{database}"},
        "providers": {
            "p1": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys"),
                "api_base_url": "http://127.0.0.1:9/v1",
                "default_model": "m",
                "models": {"m": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
            }
        },
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(document))

    code, out, err = await run_cli("breaker", "reset", "p2", "--config", str(path))
    assert code == 2
    assert "unknown provider 'p2'; the config has: p1" in err
    assert "Traceback" not in err

    code, out, err = await run_cli("breaker", "reset", "p1", "--config", str(path))
    assert code == 0, err
    assert "reset of p1's breakers requested" in out
    async with await Store.open(f"sqlite:///{database}") as store:
        rows = await store.breakers()
        assert [(r.provider, r.reset_at is not None) for r in rows] == [("p1", True)]
        (entry,) = await audit.recent(store)
        assert (entry.session, entry.action, entry.detail, entry.keys) == (
            "cli",
            "breaker reset",
            "p1",
            0,
        )
        await store.save_breakers({"p1": (2, 1)})

    code, out, err = await run_cli("status", "--config", str(path))
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PROVIDER  BREAKER"))
    assert lines[header].split()[-1] == "CHANGED"
    assert lines[header + 1].split()[:3] == ["p1", "open", "1"]
    code, out, err = await run_cli("status", "--json", "--config", str(path))
    assert code == 0, err
    (row,) = json.loads(out)["breakers"]
    assert row["provider"] == "p1"
    assert row["changed_at"] is not None  # when it opened, the save above
