"""The console as an aiohttp sub-application, mounted at `/admin` on the Keeper's listener (or
on a listener of its own): the auth middleware, the security headers, the session renewal, the
pages' routes and the static files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from llmgateway.console import (
    auth,
    breakers,
    clients,
    jobs,
    key_transfer,
    keys,
    overview,
    proxies,
)
from llmgateway.console.context import CONSOLE, Console
from llmgateway.console.headers import secure
from llmgateway.console.templating import STATIC

__all__ = ["CONSOLE", "Console", "console_app"]


def console_app(console: Console) -> web.Application:
    """The console's sub-application over `console` (mount it with
    `app.add_subapp("/admin", console_app(console))`)."""
    app = web.Application(middlewares=[auth.authenticate])
    app[CONSOLE] = console
    app.on_response_prepare.append(secure)
    app.on_response_prepare.append(auth.renew)
    app.on_cleanup.append(_closed(console))
    app.router.add_routes(auth.routes())
    for module in (overview, keys, key_transfer, clients, proxies, breakers, jobs):
        app.router.add_routes(module.routes(console))
    app.router.add_static("/static", STATIC, name="static", append_version=False)
    return app


def _closed(console: Console) -> Callable[[web.Application], Awaitable[None]]:
    async def close(_: web.Application) -> None:
        console.close()

    return close
