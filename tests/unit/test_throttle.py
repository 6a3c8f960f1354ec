"""`Throttle`: the first event of a quiet spell gets a line at once, later ones at most one
summary line per period with their count; exact, on a given clock."""

from __future__ import annotations

from llmgateway.observe.throttle import Throttle


def lines(
    throttle: Throttle, times: list[float], summaries: list[float]
) -> list[tuple[float, str, int]]:
    """Run events at `times` and summary calls at `summaries` in time order: the lines written,
    as (time, kind, count): `event` with the held ones folded in, `summary` with the held."""
    written: list[tuple[float, str, int]] = []
    events = [(t, 1, "event") for t in times] + [(t, 0, "summary") for t in summaries]
    for at, _, kind in sorted(events):  # a summary first at equal times
        if kind == "event":
            earlier = throttle.offer(at)
            if earlier is not None:
                written.append((at, "event", earlier))
        elif count := throttle.summary(at):
            written.append((at, "summary", count))
    return written


def test_the_first_event_is_written_at_once() -> None:
    throttle = Throttle(60.0)
    assert throttle.offer(1000.0) == 0
    assert throttle.held == 0
    assert throttle.summary_due() is None


def test_a_flood_is_one_line_then_one_summary_per_period() -> None:
    throttle = Throttle(60.0)
    flood = [i / 100 for i in range(10_000)]  # 10,000 events in 100 s
    written = lines(throttle, flood, summaries=[30.0, 60.0, 90.0, 120.0, 180.0])
    # 0-59.99: 6,000 events, the first written; 60.00-99.99 held after the summary at 60
    # (a summary goes first at equal times)
    assert written == [(0.0, "event", 0), (60.0, "summary", 5_999), (120.0, "summary", 4_000)]
    assert throttle.held == 0


def test_a_summary_is_not_due_before_the_period_ends() -> None:
    throttle = Throttle(60.0)
    throttle.offer(0.0)
    throttle.offer(10.0)
    throttle.offer(20.0)
    assert throttle.summary_due() == 60.0
    assert throttle.summary(59.999) == 0
    assert throttle.held == 2
    assert throttle.summary(60.0) == 2
    assert throttle.summary(200.0) == 0  # nothing left
    assert throttle.summary_due() is None


def test_an_event_after_a_quiet_period_is_written_with_the_held_count() -> None:
    throttle = Throttle(60.0)
    assert throttle.offer(0.0) == 0
    assert throttle.offer(5.0) is None
    assert throttle.offer(6.0) is None
    # no summary was asked for: the next line that goes out carries the two held ones
    assert throttle.offer(61.0) == 2
    assert throttle.offer(62.0) is None
    assert throttle.offer(121.0) == 1


def test_a_summary_line_counts_as_a_line() -> None:
    throttle = Throttle(60.0)
    written = lines(throttle, [0.0, 1.0, 70.0, 125.0, 200.0], summaries=[60.0, 120.0, 185.0])
    # 70 is within 60 s of the summary at 60, so held for the next one; 125 likewise; 200 is
    # 15 s after the summary at 185, so held too
    assert written == [
        (0.0, "event", 0),
        (60.0, "summary", 1),
        (120.0, "summary", 1),
        (185.0, "summary", 1),
    ]
    assert throttle.held == 1
    assert throttle.summary_due() == 245.0


def test_lines_per_hour_are_bounded_whatever_the_rate() -> None:
    for rate in (1, 10, 100):
        throttle = Throttle(60.0)
        times = [i / rate for i in range(3600 * rate)]
        summaries = [60.0 * n for n in range(1, 61)]
        written = lines(throttle, times, summaries)
        assert len(written) <= 61
        assert (
            sum(count for _, _, count in written) + len([w for w in written if w[1] == "event"])
            == len(times) - throttle.held
        )
