"""Token quotas: the calendar period a client's quota counts over, and its spend in it.

A period is a calendar day, week (from Monday) or month in the zone of `usage.timezone` (UTC by
default), DST included: a day may last 23 or 25 hours. The store keeps tokens per UTC hour, so a
period runs from the first whole UTC hour at or after its calendar start to the first one at or
after its calendar end (the same instants in every zone whose offset is whole hours; in a zone
such as Asia/Kolkata the period begins and ends at the half hour's next whole hour). Pure: the
time is passed in.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmgateway.core.clients import Period

UTC_ZONE = ZoneInfo("UTC")
HOUR = 3600
"""The store's grain (`records.USAGE_HOUR`): a period starts and ends on a whole UTC hour."""


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone `name` (`Europe/Berlin`, `UTC`); ValueError says why not."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin, America/New_York)"
        ) from None


def _first_day(period: Period, day: date) -> date:
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: Period, first: date) -> date:
    if period is Period.DAY:
        return first + timedelta(days=1)
    if period is Period.WEEK:
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _midnight(day: date, zone: ZoneInfo) -> float:
    """The first instant of `day` in `zone` (a midnight skipped by DST: the instant after the
    gap, which is the same instant with fold 0)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _on_hour(at: float) -> int:
    """The first whole UTC hour at or after `at`."""
    return int(-(-at // HOUR)) * HOUR


def period_bounds(period: Period, now: float, zone: ZoneInfo = UTC_ZONE) -> tuple[int, int]:
    """The period holding `now` as (start, end) epoch seconds on the hour grid: `now` is in
    [start, end)."""
    first = _first_day(period, datetime.fromtimestamp(now, zone).date())
    start = _on_hour(_midnight(first, zone))
    if now < start:  # the part hour after a half-hour zone's midnight: still the last period
        return period_bounds(period, now - HOUR, zone)
    return start, _on_hour(_midnight(_next_first_day(period, first), zone))


def period_starts(now: float, zone: ZoneInfo = UTC_ZONE) -> dict[Period, int]:
    """The start of each period holding `now`."""
    return {period: period_bounds(period, now, zone)[0] for period in Period}
