"""The tables of `llmgateway status`: keys, breakers and proxies, aligned."""

from __future__ import annotations

from llmgateway.cli.render import breaker_table, proxy_table, status_table
from llmgateway.records import StatusCount
from llmgateway.store.breakers import BreakerRow
from llmgateway.store.report import ProxyCount


def test_breaker_table_names_states_and_how_long_ago_they_changed() -> None:
    rows = [
        BreakerRow("openai", 2, 1, 990.0, None),
        BreakerRow("gemini-long-name", 1, 0, None, 5.0),
        BreakerRow("odd", 7, 0, 1001.0, None),
    ]
    assert breaker_table(rows, now=1000.0).splitlines() == [
        "PROVIDER          BREAKER    EGRESSES NOT CLOSED  CHANGED",
        "openai            open       1                    10s ago",
        "gemini-long-name  half-open  0                    -",
        "odd               7          0                    0s ago",
    ]


def test_proxy_table_right_aligns_the_counts() -> None:
    counts = [ProxyCount("openai", 12, 3), ProxyCount("g", 0, 1)]
    assert proxy_table(counts).splitlines() == [
        "PROVIDER  PROXIES  ALIVE  DEAD",
        "openai         15     12     3",
        "g               1      0     1",
    ]


def test_status_table_shows_each_stored_status_with_the_state_it_stands_for() -> None:
    counts = [
        StatusCount("openai", "shared", "rate_limited", 12, 1030.0),
        StatusCount("openai", "shared", "timeout", 3, None),
        StatusCount("gemini", "gemini-2.0-flash", "no_access", 1, 400.0),
    ]
    assert status_table(counts, now=1000.0).splitlines() == [
        "PROVIDER  MODEL             STATUS        STATE    COUNT  NEXT CHECK",
        "openai    shared            rate_limited  cooling     12  in 30s",
        "openai    shared            timeout       healthy      3  -",
        "gemini    gemini-2.0-flash  no_access     invalid      1  overdue 10m",
    ]
