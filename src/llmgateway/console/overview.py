"""The overview page at `/admin/`, and its fragment (asked for by htmx every 5 s), both from one
read of the store (`store.overview.read`; the pool-wide counts from the console's `PoolCounts`,
read in the background once they are 5 s old)."""

from __future__ import annotations

from aiohttp import web

from llmgateway.console.context import Console
from llmgateway.console.overview_view import context
from llmgateway.console.render import is_partial, render
from llmgateway.store import audit, jobs, overview
from llmgateway.store.route_report import route_targets

RECENT_ACTIONS = 10
"""Audit log entries shown."""

RECENT_JOBS = 5
"""Bulk jobs shown."""


def routes(console: Console) -> list[web.RouteDef]:
    """The overview's route: the page, or its fragment for an htmx request."""
    pool = overview.PoolCounts(console.store, console.clock)

    async def page(request: web.Request) -> web.Response:
        view = await overview.read(console.store, console.clock(), pool)
        recent = await audit.recent(console.store, RECENT_ACTIONS)
        targets = route_targets(console.settings, view.states, view.breakers)
        recent_jobs = await jobs.recent_jobs(console.store, RECENT_JOBS)
        values = context(view, recent, recent_jobs, targets)
        name = "_overview.html" if is_partial(request) else "overview.html"
        return render(request, name, **values)

    return [web.get("/", page, name="overview")]
