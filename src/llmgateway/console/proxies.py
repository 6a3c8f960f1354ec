"""The proxies page: each provider's active proxies, alive or dead, failing since when, last
checked when, the last error; every URL shown without its user and password."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from llmgateway.console.context import Console
from llmgateway.console.render import render
from llmgateway.observe.masking import shown_proxy
from llmgateway.store.proxy_list import ProxyView, active_proxies

ERROR_SHOWN = 300
"""The longest error text a row shows."""


@dataclass(frozen=True, slots=True)
class ProxyLine:
    """One proxy as the page shows it."""

    provider: str
    url: str  # masked
    state: str  # alive, dead or untested
    failing_since: float | None
    last_checked_at: float | None
    next_check_at: float | None
    error: str


def line(view: ProxyView) -> ProxyLine:
    """The page's line of one proxy: the URL and any copy of it in the error masked."""
    state = "untested" if view.alive is None else ("alive" if view.alive else "dead")
    error = (view.error or "").replace(view.url, shown_proxy(view.url))
    password = view.url.partition("://")[2].rpartition("@")[0]
    if password:
        error = error.replace(password, "***")
    if len(error) > ERROR_SHOWN:
        error = error[: ERROR_SHOWN - 1] + "…"
    return ProxyLine(
        view.provider,
        shown_proxy(view.url),
        state,
        view.failing_since,
        view.last_checked_at,
        view.next_check_at,
        error,
    )


def routes(console: Console) -> list[web.RouteDef]:
    """The proxies page's route."""

    async def page(request: web.Request) -> web.Response:
        lines = [line(view) for view in await active_proxies(console.store)]
        by_provider: dict[str, list[ProxyLine]] = {}
        for item in lines:
            by_provider.setdefault(item.provider, []).append(item)
        return render(request, "proxies.html", by_provider=by_provider)

    return [web.get("/proxies", page, name="proxies")]
