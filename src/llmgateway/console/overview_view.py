"""What the overview's templates show, made of a `store.overview.Overview`: plain values and
words, so the templates hold no logic beyond loops. Secrets never reach here (the store reads
give keys masked and by fingerprint)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmgateway.console import templating
from llmgateway.console.chart import hourly_chart
from llmgateway.records import USAGE_FLUSH_SEC
from llmgateway.store.audit import AuditEntry
from llmgateway.store.overview import Overview
from llmgateway.store.route_report import TargetView

BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass(frozen=True, slots=True)
class StateRow:
    """One provider × model: its rows in all, and per state (most first)."""

    provider: str
    model: str
    total: int
    states: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Rate:
    """Requests and failures per minute over a window starting on the hour `since`."""

    label: str
    requests: str
    failures: str
    error_percent: str
    since: str


def ago(moment: float | None, now: float) -> str:
    """`12 s ago`, `5 min ago`, … (the console's `ago`); `never` for None."""
    return "never" if moment is None else templating.ago(moment, now)


def clock_time(moment: float) -> str:
    """`HH:MM:SS UTC`."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(moment))


def state_rows(view: Overview) -> list[StateRow]:
    """The state counts per provider × model, in the store's order."""
    grouped: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for count in view.states:
        grouped.setdefault((count.provider, count.model), []).append((count.status, count.count))
    return [
        StateRow(provider, model, sum(n for _, n in states), sorted(states, key=lambda s: -s[1]))
        for (provider, model), states in grouped.items()
    ]


def rates(view: Overview) -> list[Rate]:
    """The last hour's and the last day's rates (empty without usage data)."""
    if not view.counted:
        return []
    found = []
    for label, hours in (("last 1 h", 1), ("last 24 h", 24)):
        per_minute, failing, since = view.rate(hours)
        percent = 100 * failing / per_minute if per_minute else 0.0
        found.append(
            Rate(
                label,
                f"{per_minute:.1f}",
                f"{failing:.1f}",
                f"{percent:.1f}",
                time.strftime("%d %b %H:00 UTC", time.gmtime(since)),
            )
        )
    return found


def context(
    view: Overview,
    audit: Sequence[AuditEntry],
    jobs: Sequence[Any] | None,
    targets: Sequence[TargetView] = (),
) -> dict[str, Any]:
    """The overview templates' context. `jobs`: the recent bulk jobs, or None where this
    version has no job list to show; `targets`: the routes' targets (none: no routes)."""
    now = view.now
    return {
        "updated": clock_time(now),
        "counted_ago": ago(view.counted_at, now),
        "state_rows": state_rows(view),
        "breakers": [
            (b.provider, BREAKER_STATES.get(b.state, str(b.state)), b.open_egresses, b.reset_at)
            for b in view.breakers
        ],
        "proxies": view.proxies,
        "last_sync": ago(view.last_sync_at, now),
        "backlog": view.backlog,
        "rates": rates(view),
        "chart": hourly_chart(view.hours) if view.counted else "",
        "attention": [(a, ago(a.last_used_at, now)) for a in view.attention],
        "flush_sec": f"{USAGE_FLUSH_SEC:g}",
        "audit": [(entry, ago(entry.at, now)) for entry in audit],
        "jobs": jobs,
        "targets": targets,
    }
