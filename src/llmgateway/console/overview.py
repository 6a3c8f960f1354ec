"""The overview page at `/admin/` (a placeholder until the overview's own work lands: login
needs somewhere to land)."""

from __future__ import annotations

from aiohttp import web

from llmgateway.console.context import Console
from llmgateway.console.render import render


def routes(console: Console) -> list[web.RouteDef]:
    """The overview's route."""

    async def page(request: web.Request) -> web.Response:
        providers = sorted(console.settings.providers)
        return render(request, "overview.html", providers=providers)

    return [web.get("/", page, name="overview")]
