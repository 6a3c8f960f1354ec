"""The breakers page: each provider's circuit breaker as the gateways last reported it, and
the reset that `llmgateway breaker reset` does (every gateway closes the provider's breakers
at its next refresh), recorded in the audit log."""

from __future__ import annotations

from aiohttp import web

from llmgateway.console.auth import actor
from llmgateway.console.context import Console
from llmgateway.console.render import is_partial, render
from llmgateway.store import audit

STATES = {0: "closed", 1: "half-open", 2: "open"}
"""The stored breaker states by name."""


def routes(console: Console) -> list[web.RouteDef]:
    """The breakers page and its reset."""

    async def page(request: web.Request) -> web.Response:
        return await _page(request, console, notice="")

    async def reset(request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        if provider not in console.settings.providers:
            return web.json_response({"error": f"unknown provider {provider!r}"}, status=404)
        await console.store.request_breaker_reset(provider)
        await audit.record(console.store, actor(request), "breaker reset", provider, 0)
        wait = console.settings.gateway.refresh_interval_sec
        notice = f"Reset of {provider}'s breakers requested: gateways apply it within {wait:g} s."
        if is_partial(request) or "Authorization" in request.headers:
            return await _page(request, console, notice=notice)
        raise web.HTTPSeeOther("/admin/breakers")

    return [
        web.get("/breakers", page, name="breakers"),
        web.post("/breakers/{provider}/reset", reset, name="breaker-reset"),
    ]


async def _page(request: web.Request, console: Console, notice: str) -> web.Response:
    rows = {row.provider: row for row in await console.store.breakers()}
    providers = sorted(set(console.settings.providers) | set(rows))
    lines = [
        {
            "provider": name,
            "state": STATES.get(rows[name].state, "unknown") if name in rows else "closed",
            "open_egresses": rows[name].open_egresses if name in rows else 0,
            "changed_at": rows[name].changed_at if name in rows else None,
            "reset_at": rows[name].reset_at if name in rows else None,
            "configured": name in console.settings.providers,
        }
        for name in providers
    ]
    name = "_breakers_rows.html" if is_partial(request) else "breakers.html"
    return render(request, name, lines=lines, notice=notice)
