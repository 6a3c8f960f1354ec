"""Token quotas, the pure parts: the calendar periods in a time zone (DST, month and year ends,
weeks from Monday, a half-hour zone), `usage.timezone`'s check, and one process's spend of a
quota (the store's read plus what it counted since, never twice) with an injected clock."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from llmgateway.conductor.quotas import SETTLED_SEC, Quotas
from llmgateway.config.settings import Settings
from llmgateway.core.clients import ClientRules, Period
from llmgateway.core.quota import period_bounds, period_starts

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def at(text: str, zone: ZoneInfo) -> float:
    """The instant of a wall-clock time in `zone`."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def shown(bounds: tuple[int, int], zone: ZoneInfo) -> tuple[str, str]:
    return tuple(datetime.fromtimestamp(b, zone).isoformat() for b in bounds)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("period", "when", "start", "end", "hours"),
    [
        # spring forward: 23 hours
        ("day", "2026-03-29T12:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 23),
        # fall back: 25 hours
        ("day", "2026-10-25T12:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 25),
        # the week holding the change, from Monday
        ("week", "2026-03-29T23:59", "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 167),
        ("week", "2026-03-30T00:00", "2026-03-30T00:00:00+02:00", "2026-04-06T00:00:00+02:00", 168),
        (
            "month",
            "2026-10-31T23:59",
            "2026-10-01T00:00:00+02:00",
            "2026-11-01T00:00:00+01:00",
            745,
        ),
        (
            "month",
            "2026-12-31T23:30",
            "2026-12-01T00:00:00+01:00",
            "2027-01-01T00:00:00+01:00",
            744,
        ),
        (
            "month",
            "2028-02-29T10:00",
            "2028-02-01T00:00:00+01:00",
            "2028-03-01T00:00:00+01:00",
            696,
        ),
    ],
)
def test_periods_in_a_zone_with_dst(
    period: str, when: str, start: str, end: str, hours: int
) -> None:
    bounds = period_bounds(Period(period), at(when, BERLIN), BERLIN)
    assert shown(bounds, BERLIN) == (start, end)
    assert (bounds[1] - bounds[0]) // 3600 == hours


def test_a_period_ends_where_the_next_begins() -> None:
    for period in Period:
        start, end = period_bounds(period, at("2026-12-31T23:59:59", UTC))
        assert period_bounds(period, end)[0] == end
        assert period_bounds(period, end - 1) == (start, end)
    # a week across the year's end begins on Monday 2026-12-28
    assert shown(period_bounds(Period.WEEK, at("2027-01-03T12:00", UTC)), UTC) == (
        "2026-12-28T00:00:00+00:00",
        "2027-01-04T00:00:00+00:00",
    )


def test_a_half_hour_zone_starts_at_the_next_whole_hour() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30: midnight is 18:30 UTC
    start, end = period_bounds(Period.DAY, at("2026-12-07T00:15", kolkata), kolkata)
    assert shown((start, end), kolkata) == (
        "2026-12-06T00:30:00+05:30",
        "2026-12-07T00:30:00+05:30",
    )
    assert start % 3600 == 0
    assert end % 3600 == 0
    assert period_bounds(Period.DAY, at("2026-12-07T00:30", kolkata), kolkata)[0] == end


def test_a_midnight_skipped_by_dst_starts_the_day_after_the_gap() -> None:
    santiago = ZoneInfo("America/Santiago")  # 2026-09-06: 00:00 → 01:00
    bounds = period_bounds(Period.DAY, at("2026-09-06T12:00", santiago), santiago)
    assert shown(bounds, santiago)[0] == "2026-09-06T01:00:00-03:00"
    assert (bounds[1] - bounds[0]) // 3600 == 23


def test_usage_timezone_is_checked() -> None:
    assert Settings.model_validate({"usage": {"timezone": "Europe/Berlin"}}).usage.zone() == BERLIN
    assert Settings().usage.zone() == UTC
    with pytest.raises(ValidationError, match="not an IANA time zone name"):
        Settings.model_validate({"usage": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ValidationError, match="not an IANA time zone name"):
        Settings.model_validate({"usage": {"timezone": "../etc/passwd"}})


class Store:
    """The store's hourly sums, as `token_usage.period_sums` reads them."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int]] = []  # client, hour, tokens
        self.reads = 0

    async def sums(
        self, starts: Mapping[Period, int], clients: Collection[str], before: int | None
    ) -> dict[str, dict[Period, int]]:
        self.reads += 1
        found: dict[str, dict[Period, int]] = {}
        for client, hour, tokens in self.rows:
            if client in clients and (before is None or hour < before):
                for period, start in starts.items():
                    if hour >= start:
                        sums = found.setdefault(client, dict.fromkeys(Period, 0))
                        sums[period] += tokens
        return found


NOON = at("2026-12-07T12:00", UTC)
HOUR = int(NOON // 3600) * 3600


async def test_a_spend_is_the_store_read_plus_what_was_counted_since() -> None:
    store, quotas = Store(), Quotas()
    rules = ClientRules("app", quota_tokens=1000, period=Period.DAY)
    quotas.set_rules([rules, ClientRules("free")], NOON)
    assert quotas.active
    store.rows.append(("app", HOUR - 3600, 600))  # another gateway's, earlier today
    store.rows.append(("app", HOUR - 86_400, 5000))  # yesterday's: another period
    await quotas.read(store.sums, NOON)
    assert quotas.refusal(rules, NOON) is None
    quotas.count("app", HOUR, 300)  # this gateway's, not written yet
    quotas.count("free", HOUR, 10**9)  # no quota: not tracked
    spend = quotas.spend("app", NOON)
    assert spend is not None
    assert spend.spent == 900
    await quotas.read(store.sums, NOON)  # unwritten: still counted here
    assert spend.spent == 900
    quotas.written("app", HOUR, 300)  # the write-behind's batch; the store has it now
    store.rows.append(("app", HOUR, 300))
    assert spend.spent == 900  # until the next read, from the counts
    await quotas.read(store.sums, NOON)
    assert spend.spent == 900  # from the store, never twice
    quotas.count("app", HOUR, 100)
    refused = quotas.refusal(rules, NOON)
    assert refused is not None
    assert (refused.status, refused.code) == (429, "insufficient_quota")
    assert refused.retry_after == 12 * 3600  # to midnight UTC
    assert ("x-llmgateway-quota-limit-tokens", "1000") in refused.headers
    assert ("x-llmgateway-quota-reset", "2026-12-08T00:00:00Z") in refused.headers
    assert "1000 of 1000 tokens" in refused.message


async def test_a_write_during_a_read_is_never_lost() -> None:
    """A batch the store takes while the read runs may be in the read: it stays counted here
    until the next read (counted twice for a moment, never missed)."""
    store, quotas = Store(), Quotas()
    quotas.set_rules([ClientRules("app", quota_tokens=1000, period=Period.DAY)], NOON)
    quotas.count("app", HOUR, 400)

    async def racing(
        starts: Mapping[Period, int], clients: Collection[str], before: int | None
    ) -> dict[str, dict[Period, int]]:
        if before is None:  # the read of the recent hours
            quotas.written("app", HOUR, 400)
            store.rows.append(("app", HOUR, 400))
        return await store.sums(starts, clients, before)

    await quotas.read(racing, NOON)
    spend = quotas.spend("app", NOON)
    assert spend is not None
    assert spend.spent == 800
    await quotas.read(store.sums, NOON)
    assert spend.spent == 400


async def test_a_new_period_starts_at_zero_without_a_read() -> None:
    store, quotas = Store(), Quotas(zone=BERLIN)
    rules = ClientRules("app", quota_tokens=100, period=Period.MONTH)
    now = at("2026-10-31T23:30", BERLIN)
    quotas.set_rules([rules], now)
    store.rows.append(("app", int(now // 3600) * 3600, 150))
    await quotas.read(store.sums, now)
    reads = store.reads
    refused = quotas.refusal(rules, now)
    assert refused is not None
    assert refused.retry_after == 1800
    # November, Berlin time (23:00 UTC): let through at once, the store not read again
    assert quotas.refusal(rules, at("2026-11-01T00:00", BERLIN)) is None
    assert store.reads == reads
    # a late count of October's last hour does not count in November
    quotas.count("app", int(now // 3600) * 3600, 500)
    assert quotas.refusal(rules, at("2026-11-01T00:00", BERLIN)) is None


async def test_rules_keep_a_spend_unless_the_period_changes() -> None:
    quotas = Quotas()
    quotas.set_rules([ClientRules("app", quota_tokens=100, period=Period.DAY)], NOON)
    quotas.count("app", HOUR, 80)
    quotas.set_rules([ClientRules("app", quota_tokens=50, period=Period.DAY)], NOON)
    spend = quotas.spend("app", NOON)
    assert spend is not None
    assert (spend.limit, spend.spent) == (50, 80)
    quotas.set_rules([ClientRules("app", quota_tokens=50, period=Period.WEEK)], NOON)
    assert quotas.spend("app", NOON).spent == 0  # type: ignore[union-attr]
    quotas.set_rules([], NOON)
    assert not quotas.active
    assert quotas.spend("app", NOON) is None


def test_period_starts_name_every_period() -> None:
    starts = period_starts(NOON)
    assert starts[Period.DAY] == at("2026-12-07T00:00", UTC)
    assert starts[Period.WEEK] == at("2026-12-07T00:00", UTC)  # a Monday
    assert starts[Period.MONTH] == at("2026-12-01T00:00", UTC)


async def test_a_new_zone_starts_the_spends_again_from_the_store() -> None:
    store, quotas = Store(), Quotas()
    rules = ClientRules("app", quota_tokens=100, period=Period.DAY)
    quotas.set_rules([rules], NOON)
    quotas.count("app", HOUR, 150)
    assert quotas.refusal(rules, NOON) is not None
    quotas.use_zone(BERLIN)
    quotas.set_rules([rules], NOON)
    spend = quotas.spend("app", NOON)
    assert spend is not None
    assert spend.start == at("2026-12-07T00:00", BERLIN)
    store.rows.append(("app", HOUR, 150))
    await quotas.read(store.sums, NOON)
    assert quotas.refusal(rules, NOON) is not None


async def test_a_refresh_reads_the_last_two_hours_and_the_older_ones_now_and_then() -> None:
    store, quotas = Store(), Quotas()
    rules = ClientRules("app", quota_tokens=10_000, period=Period.MONTH)
    quotas.set_rules([rules], NOON)
    store.rows += [("app", HOUR - 5 * 3600, 100), ("app", HOUR - 3600, 10), ("app", HOUR, 1)]
    await quotas.read(store.sums, NOON)
    assert store.reads == 2  # the settled hours, then the last two
    spend = quotas.spend("app", NOON)
    assert spend is not None
    assert spend.spent == 111
    store.rows += [("app", HOUR, 2), ("app", HOUR - 3600, 20), ("app", HOUR - 2 * 3600, 1000)]
    await quotas.read(store.sums, NOON + 10)
    assert store.reads == 3  # the last two hours only
    assert spend.spent == 133  # a late write to an older hour is not seen yet...
    await quotas.read(store.sums, NOON + SETTLED_SEC)
    assert store.reads == 5
    assert spend.spent == 1133  # ...until the older hours are read again
    await quotas.read(store.sums, NOON + 3600)  # the next hour: the cut moves
    assert store.reads == 7
    assert spend.spent == 1133
    quotas.set_rules([rules, ClientRules("new", quota_tokens=5)], NOON + 3601)
    await quotas.read(store.sums, NOON + 3602)  # a new client: its older hours are read
    assert store.reads == 9
