"""The first checks' adaptive rate (`keeper.pacing`), exactly, with the time passed in."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmgateway.config.settings import FirstCheckPolicy
from llmgateway.keeper.pacing import BURST_SEC, CUT_WINDOW_SEC, AdaptiveRate


def rate(**policy: float) -> AdaptiveRate:
    settings = {"start_rate": 10.0, "min_rate": 1.0, "max_rate": 40.0, "rate_step": 5.0}
    return AdaptiveRate(FirstCheckPolicy.model_validate({**settings, **policy}))


def test_calls_are_spaced_by_one_over_the_rate() -> None:
    r = rate()
    assert r.wait(100.0) == 0.0  # the first call goes at once
    assert r.wait(100.0) == pytest.approx(0.1 - BURST_SEC)  # one slot of a 10/s rate later
    assert r.wait(100.05) == 0.0
    assert r.wait(100.05) == pytest.approx(0.1)
    assert r.wait(100.15) == 0.0


def test_an_idle_caller_catches_up_only_a_short_burst() -> None:
    r = rate(start_rate=100.0, max_rate=100.0)
    r.wait(0.0)
    # after a minute idle, BURST_SEC worth of slots (5 at 100/s) go at once, then the pace holds
    went = 0
    while r.wait(60.0) == 0.0:
        went += 1
    assert went == round(BURST_SEC * 100) + 1


def test_answers_add_step_over_rate_up_to_the_ceiling() -> None:
    r = rate()
    r.passed()
    assert r.rate == pytest.approx(10.5)  # + 5 / 10
    for _ in range(10_000):
        r.passed()
    assert r.rate == 40.0


def test_a_429_halves_the_rate_once_per_window_and_never_below_the_floor() -> None:
    r = rate()
    r.throttled(10.0, None)
    assert (r.rate, r.cuts) == (5.0, 1)
    r.throttled(10.0 + CUT_WINDOW_SEC / 2, None)  # the same burst of 429s: one signal
    assert (r.rate, r.cuts) == (5.0, 1)
    r.throttled(10.0 + CUT_WINDOW_SEC, None)
    assert (r.rate, r.cuts) == (2.5, 2)
    for step in range(2, 10):
        r.throttled(10.0 + step * CUT_WINDOW_SEC, None)
    assert r.rate == 1.0


def test_retry_after_pauses_every_call_until_it_has_passed() -> None:
    r = rate()
    assert r.wait(0.0) == 0.0
    r.throttled(0.5, 30.0)
    assert r.wait(1.0) == pytest.approx(29.5)
    assert r.wait(30.4) == pytest.approx(0.1)
    assert r.wait(30.5) == 0.0  # Retry-After has passed: calls go again, at the cut rate
    assert r.wait(30.5) == pytest.approx(1 / 5.0 - BURST_SEC)
    # a shorter Retry-After later never shortens a pause already running
    r.throttled(40.0, 20.0)
    r.throttled(41.0, 1.0)
    assert r.wait(45.0) == pytest.approx(15.0)


def test_the_policy_is_strictly_validated() -> None:
    for bad in (
        {"start_rate": 0.5},  # below min_rate
        {"start_rate": 2000.0},  # above max_rate
        {"decrease_factor": 1.0},
        {"concurrency": 0},
        {"max_rate": 0},
        {"rate_step": -1},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            FirstCheckPolicy.model_validate(bad)
