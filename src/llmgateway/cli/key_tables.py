"""How `llmgateway keys list|show` print keys: aligned text for people, JSON for scripts.

Every value shown comes from a `KeyListing`, which holds the key masked and by fingerprint only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmgateway.cli.render import humanize
from llmgateway.core.key_states import DISABLED, state_of_status
from llmgateway.store.key_list import KeyListing

ERROR_WIDTH = 60
"""Characters of the last error a table shows (JSON has it as stored, up to 500)."""

LIST_HEADER = (
    "FINGERPRINT",
    "KEY",
    "PROVIDER",
    "MODEL",
    "STATE",
    "STATUS",
    "CODE",
    "FAILING SINCE",
    "NEXT CHECK",
    "SOURCE",
    "LAST ERROR",
)
SHOW_HEADER = (
    "MODEL",
    "STATE",
    "STATUS",
    "CODE",
    "FAILING SINCE",
    "NEXT CHECK",
    "LAST CHECK",
    "LAST ERROR",
)


def state_of(row: KeyListing) -> str:
    """What selection does with the row: its status's state, or why it does not serve."""
    if not row.provider_enabled:
        return "disabled"
    if not row.in_files:
        return "removed"
    if not row.serving:
        return "retired"  # its model left the config (or shared_key_status changed)
    if row.disabled_at is not None:
        return DISABLED
    return state_of_status(row.status)


def ago(at: float | None, now: float) -> str:
    """`5m ago`, `now`, or `-`."""
    if at is None:
        return "-"
    text = humanize(at, now)
    return text.replace("overdue ", "") + " ago" if text.startswith("overdue") else text


def short_error(error: str | None, width: int = ERROR_WIDTH) -> str:
    """The error on one line, cut to `width` characters."""
    if not error:
        return "-"
    flat = " ".join(error.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def list_lines(rows: Sequence[KeyListing], now: float, *, header: bool) -> list[str]:
    """`keys list` rows as aligned text (each page aligned by itself; the last column ragged)."""
    table = [LIST_HEADER] if header else []
    table += [
        (
            r.fingerprint,
            r.masked,
            r.provider,
            r.model,
            state_of(r),
            r.status,
            "-" if r.status_code is None else str(r.status_code),
            ago(r.failing_since, now),
            humanize(r.next_check_at, now),
            r.source or "-",
            short_error(r.error),
        )
        for r in rows
    ]
    return _aligned(table)


def show_lines(key_rows: Sequence[KeyListing], now: float) -> list[str]:
    """One key of `keys show`: what it is and where, then each of its rows."""
    first = key_rows[0]
    if first.source is None:
        where = "file:line not recorded yet (the next sync of the key files records it)"
    else:
        where = first.source
    if not first.in_files:
        found = f"removed from the files {ago(first.removed_at, now)}; last found at {where}"
    else:
        found = f"in the files at {where}"
    lines = [
        f"{first.fingerprint}  {first.masked}  provider {first.provider}"
        + ("" if first.provider_enabled else " (disabled)"),
        f"  {found}",
        f"  added {ago(first.added_at, now)}",
    ]
    if first.disabled_at is not None:
        lines.append(
            f"  disabled {ago(first.disabled_at, now)} by `llmgateway keys disable`: no gateway "
            "serves it, the Keeper does not probe it (`llmgateway keys enable` puts it back)"
        )
    table: list[tuple[str, ...]] = [SHOW_HEADER]
    table += [
        (
            r.model,
            state_of(r),
            r.status,
            "-" if r.status_code is None else str(r.status_code),
            ago(r.failing_since, now),
            humanize(r.next_check_at, now) if r.serving else "-",
            ago(r.last_checked_at, now),
            short_error(r.error),
        )
        for r in key_rows
    ]
    return lines + ["  " + line for line in _aligned(table)]


def listing_json(row: KeyListing) -> dict[str, Any]:
    """One row of `keys list --json`."""
    return {
        "fingerprint": row.fingerprint,
        "key": row.masked,
        "provider": row.provider,
        "model": row.model,
        "state": state_of(row),
        "status": row.status,
        "reason": row.reason,
        "status_code": row.status_code,
        "last_error": row.error,
        "failing_since": row.failing_since,
        "cooldown_until": row.cooldown_until,
        "next_check_at": row.next_check_at,
        "last_checked_at": row.last_checked_at,
        "source": row.source,
    }


def key_json(key_rows: Sequence[KeyListing]) -> dict[str, Any]:
    """One key of `keys show --json`, with its rows under `models`."""
    first = key_rows[0]
    models = []
    for row in key_rows:
        entry = listing_json(row)
        for name in ("fingerprint", "key", "provider", "source"):
            del entry[name]
        models.append(entry | {"latency_ms": row.latency_ms, "serving": row.serving})
    return {
        "fingerprint": first.fingerprint,
        "key": first.masked,
        "provider": first.provider,
        "provider_enabled": first.provider_enabled,
        "source": first.source,
        "in_files": first.in_files,
        "added_at": first.added_at,
        "removed_at": first.removed_at,
        "disabled_at": first.disabled_at,
        "models": models,
    }


def dumps(value: object) -> str:
    """Compact JSON for one item of a streamed document."""
    return json.dumps(value, separators=(",", ":"))


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    if not table:
        return []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
