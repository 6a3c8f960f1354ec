"""The rows of the clients page: each client as `llmgateway clients list --json` gives it
(`client_views`, the quota's spend in its current period added by `client_edits.add_spend`),
with its tokens (input and output) of the last 24 hours and 7 days from the hourly token
counts: two grouped queries for the whole page."""

from __future__ import annotations

from typing import Any

from llmgateway.client_edits import add_spend, config_token
from llmgateway.client_views import stored_view, token_view
from llmgateway.console.context import Console
from llmgateway.store import clients as stored
from llmgateway.store.token_usage import totals

SPANS = (("day", 86_400.0), ("week", 7 * 86_400.0))
"""The usage columns: tokens since this long ago (from the start of that hour)."""


async def _with_usage(console: Console, views: list[dict[str, Any]], now: float) -> None:
    """Add `used_day` and `used_week` (tokens, input and output) to each view."""
    names = [view["name"] for view in views]
    for label, span in SPANS:
        found = await totals(console.store, now - span, "client", names) if names else []
        used = {total.name: total.input + total.output for total in found}
        for view in views:
            view[f"used_{label}"] = used.get(view["name"], 0)


async def client_rows(console: Console) -> list[dict[str, Any]]:
    """Every client's row: the stored ones by name, then the config's."""
    now = console.clock()
    views = [stored_view(r, now) for r in await stored.all_clients(console.store.engine)]
    views += [token_view(t, now) for t in console.settings.gateway.tokens]
    await add_spend(console.store, console.settings, views, now)
    await _with_usage(console, views, now)
    return views


async def one_client(console: Console, name: str) -> dict[str, Any] | None:
    """Client `name`'s row (the config's declaration first, as the gateway reads it)."""
    now = console.clock()
    declared = config_token(console.settings, name)
    if declared is not None:
        view = token_view(declared, now)
    else:
        found = await stored.find(console.store.engine, name)
        if found is None:
            return None
        view = stored_view(found, now)
    await add_spend(console.store, console.settings, [view], now)
    await _with_usage(console, [view], now)
    return view
