"""The budget of the key-turn WARNING lines: the first 100 of a minute one by one, then one
summary line per minute, on an injected clock."""

from __future__ import annotations

import logging

import pytest
from tests.helpers import ManualClock

from llmgateway.observe.key_turns import TurnBudget, TurnLog
from llmgateway.records import KeyTurn


def turn(n: int, status: str = "invalid_key", source: str | None = "keys/a.txt:3") -> KeyTurn:
    return KeyTurn(
        provider="openai",
        masked=f"sk-…{n:04d}",
        fingerprint=f"{n:012x}",
        source=source,
        status=status,
        models=("gpt-4o", "gpt-4o-mini"),
        status_code=401,
    )


def test_the_first_of_a_window_are_logged_the_rest_summed_when_it_ends() -> None:
    budget = TurnBudget(per_window=3, window_sec=60.0)
    assert [budget.record(100.0 + i, "invalid_key") for i in range(3)] == [(True, {})] * 3
    assert budget.due_at is None  # nothing held yet
    assert budget.record(110.0, "no_quota") == (False, {})
    assert budget.record(159.9, "invalid_key") == (False, {})
    assert budget.record(159.99, "no_quota") == (False, {})
    assert budget.due_at == 160.0
    assert budget.close(159.999) == {}
    assert budget.close(160.0) == {"invalid_key": 1, "no_quota": 2}
    assert budget.close(160.0) == {}  # handed back once
    # the next window starts at the next turn, not at the end of the last one
    assert budget.record(500.0, "no_access") == (True, {})
    assert budget.due_at is None


def test_a_turn_after_the_window_brings_its_summary_first() -> None:
    budget = TurnBudget(per_window=1, window_sec=60.0)
    assert budget.record(0.0, "invalid_key") == (True, {})
    assert budget.record(1.0, "invalid_key") == (False, {})
    assert budget.record(61.0, "no_quota") == (True, {"invalid_key": 1})
    assert budget.record(62.0, "no_quota") == (False, {})
    assert budget.close(120.9) == {}
    assert budget.close(121.0) == {"no_quota": 1}


def test_exactly_100_a_minute_are_logged_one_by_one() -> None:
    budget = TurnBudget()
    logged = [budget.record(i * 0.5, "invalid_key")[0] for i in range(101)]
    assert logged == [True] * 100 + [False]


def test_the_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(1000.0)
    log = TurnLog(clock, TurnBudget(per_window=2, window_sec=60.0))
    with caplog.at_level(logging.WARNING, "llmgateway.keys"):
        log.report([turn(1), turn(2, "no_quota", source=None), turn(3), turn(4, "no_quota")])
        assert [r.getMessage() for r in caplog.records] == [
            "key sk-…0001 (fingerprint 000000000001) of openai at keys/a.txt:3 is now "
            "invalid_key for gpt-4o, gpt-4o-mini, upstream 401",
            "key sk-…0002 (fingerprint 000000000002) of openai at file:line not recorded yet "
            "(the next sync records it) is now no_quota for gpt-4o, gpt-4o-mini, upstream 401",
        ]
        assert caplog.records[0].key == "000000000001"  # type: ignore[attr-defined]
        assert caplog.records[0].source == "keys/a.txt:3"  # type: ignore[attr-defined]
        caplog.clear()
        clock.advance(59)
        log.flush()
        assert caplog.records == []
        clock.advance(1)
        log.flush()
        assert [r.getMessage() for r in caplog.records] == [
            "2 more keys went out of service in the last 60s than were logged one by one "
            "(1 invalid_key, 1 no_quota); `llmgateway keys list --status STATUS` lists them"
        ]
        assert {r.levelno for r in caplog.records} == {logging.WARNING}


async def test_a_summary_is_timed_for_the_end_of_its_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With an event loop, a summary does not wait for another turn: a timer is set for the
    window's end, and it calls `flush()` (called here, with the clock moved, instead of waiting)."""
    import asyncio

    clock = ManualClock(1000.0)
    log = TurnLog(clock, TurnBudget(per_window=1, window_sec=60.0))
    with caplog.at_level(logging.WARNING, "llmgateway.keys"):
        log.report([turn(1)])
        assert log.pending_summary is None  # nothing held: no timer
        clock.advance(20)
        log.report([turn(2)])
        timer = log.pending_summary
        assert timer is not None
        assert 39.0 < timer.when() - asyncio.get_running_loop().time() <= 40.0
        clock.advance(40)
        timer.cancel()
        log.flush()
        assert [r.getMessage()[:30] for r in caplog.records] == [
            "key sk-…0001 (fingerprint 0000",
            "1 more keys went out of servic",
        ]
        assert log.pending_summary is None
