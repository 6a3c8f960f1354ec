"""Tables `llmgateway status` prints: the keys by status, the breakers gateways reported (and when
each last changed), and the proxies' health."""

from __future__ import annotations

from llmgateway.core.key_states import shown_state
from llmgateway.core.resilience import BreakerState
from llmgateway.records import StatusCount
from llmgateway.store.breakers import BreakerRow
from llmgateway.store.config_runs import ConfigRun
from llmgateway.store.report import ProxyCount
from llmgateway.store.route_report import TargetView

_STATE_NAMES = {int(state): state.name.lower().replace("_", "-") for state in BreakerState}


def breaker_table(rows: list[BreakerRow], now: float) -> str:
    """The `llmgateway status` table of breakers: provider, state, egress breakers not closed,
    and how long ago that stored state last changed (gateways report changes only)."""
    lines = [("PROVIDER", "BREAKER", "EGRESSES NOT CLOSED", "CHANGED")]
    for row in rows:
        ago = "-" if row.changed_at is None else f"{max(0, int(now - row.changed_at))}s ago"
        state = _STATE_NAMES.get(row.state, str(row.state))
        lines.append((row.provider, state, str(row.open_egresses), ago))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def proxy_table(counts: list[ProxyCount]) -> str:
    """`PROVIDER  PROXIES  ALIVE  DEAD` as aligned text."""
    rows = [("PROVIDER", "PROXIES", "ALIVE", "DEAD")]
    rows += [(c.provider, str(c.alive + c.dead), str(c.alive), str(c.dead)) for c in counts]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def status_table(counts: list[StatusCount], now: float) -> str:
    """The key counts as a table: provider, model, status (the stored finding), state (what
    selection does with such a key), count, next check (from `now`)."""
    rows = [("PROVIDER", "MODEL", "STATUS", "STATE", "COUNT", "NEXT CHECK")]
    rows += [
        (
            c.provider,
            c.model,
            c.status,
            shown_state(c.status),
            str(c.count),
            humanize(c.next_check_at, now),
        )
        for c in counts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            value.rjust(width) if column == 4 else value.ljust(width)
            for column, (value, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def humanize(at: float | None, now: float) -> str:
    """When a check is due, relative to `now`: `now`, `in 5m`, `overdue 2h`, or `-`."""
    if at is None:
        return "-"
    delta = at - now
    if abs(delta) < 1:
        return "now"
    amount = abs(delta)
    unit, size = next(
        (u, s) for u, s in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if amount >= s
    )
    text = f"{int(amount // size)}{unit}"
    return f"in {text}" if delta > 0 else f"overdue {text}"


def untested_notes(counts: list[StatusCount], tested_only: set[str]) -> list[str]:
    """A line for each provider in `tested_only` (`serve_untested_keys: false`) that has
    untested keys: they are not served before their first probe, as the table cannot say."""
    waiting = sorted(
        {
            c.provider
            for c in counts
            if c.provider in tested_only and shown_state(c.status) == "untested"
        }
    )
    return [
        f"{provider}: untested keys are not served before their first probe"
        " (gateway_policy.serve_untested_keys: false)"
        for provider in waiting
    ]


def targets_table(views: list[TargetView]) -> str:
    """The `llmgateway status` table of routes: each target, its tier and weight, the keys
    that may serve it, its provider's breaker, and whether the plan would try it now."""
    lines = [("ROUTE", "TARGET", "PRIORITY", "WEIGHT", "USABLE KEYS", "BREAKER", "ELIGIBLE")]
    for view in views:
        eligible = "yes" if view.eligible else f"no: {view.why}"
        weight = f"{view.weight:g}"
        lines.append(
            (
                view.route,
                view.target,
                str(view.priority),
                weight,
                str(view.usable),
                view.breaker,
                eligible,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def config_table(runs: list[ConfigRun], now: float) -> str:
    """The `llmgateway status` table of running processes: who, the config hash each runs,
    how its last reload went (`started`: none since it started) and when it last said so."""
    lines = [("PROCESS", "ROLE", "CONFIG", "LAST RELOAD", "SEEN")]
    for run in runs:
        seen = f"{max(0, int(now - run.updated_at))}s ago"
        lines.append((run.process, run.role, run.config_hash, run.outcome, seen))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
