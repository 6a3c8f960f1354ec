"""When the Keeper reports (`keeper.reporting`): a long round's progress lines and a quiet idle
Keeper, with the time passed in."""

from __future__ import annotations

import logging

from llmgateway.keeper.reporting import (
    IDLE_SUMMARY_SEC,
    ProgressGate,
    RoundLog,
    describe_progress,
    describe_round,
    describe_seconds,
)
from llmgateway.keeper.summary import Progress, RoundSummary


def round_of(due: int, probed: int = 0) -> RoundSummary:
    return RoundSummary(due, probed, 0, 0, 0, probed, 1 if probed else 0, 0, 1.0)


def test_progress_is_reported_every_ten_percent_of_a_long_round() -> None:
    gate = ProgressGate(interval=10.0, started=0.0)
    reported = [done for done in range(0, 1001, 50) if gate.due(Progress(done, 1000), 1.0)]
    assert reported == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]


def test_progress_is_reported_every_interval_while_rows_remain() -> None:
    gate = ProgressGate(interval=10.0, started=0.0)
    slow = Progress(1_870, 100_000)  # under 10 % after 15 minutes: time still reports it
    assert [t for t in range(0, 35) if gate.due(slow, float(t))] == [10, 20, 30]
    small = ProgressGate(interval=10.0, started=0.0)
    assert not small.due(Progress(3, 7), 5.0)  # a short small round says nothing
    assert small.due(Progress(3, 7), 10.0)  # by time only: fewer than 500 rows
    assert not small.due(Progress(7, 7), 30.0)  # done: the summary follows


def test_a_progress_line_has_counts_rate_eta_and_outcomes() -> None:
    progress = Progress(1_870, 100_000, 1_500, 300, 70, 0, 900.0)
    assert describe_progress(progress) == (
        "probed 1,870/100,000 (1.9 %), 2.1 rows/s, ETA 13 h 7 min; "
        "1,500 healthy, 300 failed, 70 verifying, 0 egress faults"
    )
    assert "ETA unknown yet" in describe_progress(Progress(0, 10, seconds=0.0))
    assert [describe_seconds(s) for s in (42, 425, 47_400)] == ["42 s", "7 min 5 s", "13 h 10 min"]


def test_a_cut_or_stopped_round_says_what_stays_due() -> None:
    cut = RoundSummary(100, 40, 0, 0, 0, 40, 1, 1, 900.0)
    assert describe_round(cut).endswith(
        "; cut by task_timeout_sec for 1 provider(s), 60 rows not probed stay due"
    )
    stopped = RoundSummary(100, 40, 0, 0, 0, 40, 1, 0, 3.0, stopped=True)
    assert describe_round(stopped).endswith("; stopped early, 60 rows not probed stay due")


def test_an_idle_keeper_logs_at_debug_and_sums_up_at_most_every_ten_minutes() -> None:
    log = RoundLog()
    levels = [log.entry(round_of(0), t * 60.0)[0] for t in range(31)]  # a round a minute
    infos = [t for t, level in enumerate(levels) if level == logging.INFO]
    assert infos == [0, 10, 20, 30]
    assert all(level == logging.DEBUG for t, level in enumerate(levels) if t not in infos)
    assert log.entry(round_of(0), 30 * 60.0 + IDLE_SUMMARY_SEC)[1] == (
        "keeper idle: nothing due in 1 probe round(s) over the last 10 min 0 s"
    )


def test_a_round_with_work_is_logged_at_info_and_restarts_the_idle_count() -> None:
    log = RoundLog()
    log.entry(round_of(0), 0.0)
    level, line = log.entry(round_of(5, 5), 30.0)
    assert level == logging.INFO
    assert line.startswith("probe round: 5 due, 5 healthy")
    assert log.entry(round_of(0), 60.0)[0] == logging.DEBUG
    assert log.entry(round_of(0), 30.0 + IDLE_SUMMARY_SEC)[0] == logging.INFO
