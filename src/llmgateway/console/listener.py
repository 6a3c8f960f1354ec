"""Serving the console with the Keeper: mounted at `/admin` on the Keeper's metrics listener,
or on a listener of its own when `admin.port` is set (its `/` leads to `/admin/`). `worker`,
`serve` and `demo` run the Keeper's HTTP through `keeper_http`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from llmgateway.console.app import console_app
from llmgateway.console.context import Console
from llmgateway.observe.metrics_http import keeper_metrics, listening

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.observe.metrics import Metrics
    from llmgateway.store import Store

_log = logging.getLogger("llmgateway.console")


@contextlib.asynccontextmanager
async def keeper_http(
    settings: Settings,
    metrics: Metrics,
    store: Store,
    *,
    serve_metrics: bool = True,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[str | None]:
    """The Keeper's listeners (`keeper_metrics`) and, when `admin.token` is set, the console;
    yields the console's URL (None when it is off). The URL is logged, never the token."""
    admin = settings.admin
    if not admin.enabled:
        async with keeper_metrics(settings, metrics, store, serve_metrics=serve_metrics):
            yield None
        return
    console = Console.create(settings, store, metrics, clock)
    sub = console_app(console)
    if admin.port is None:
        async with keeper_metrics(settings, metrics, store, sub, serve_metrics=serve_metrics):
            worker = settings.worker
            host = f"[{worker.metrics_host}]" if ":" in worker.metrics_host else worker.metrics_host
            url = f"http://{host}:{worker.metrics_port}/admin/"
            _log.info("the console is at %s", url)
            yield url
        return
    async with (
        keeper_metrics(settings, metrics, store, serve_metrics=serve_metrics),
        listening(own_listener(sub), admin.listen_host, admin.port) as base,
    ):
        _log.info("the console is at %s/admin/", base)
        yield f"{base}/admin/"


def own_listener(sub: web.Application) -> web.Application:
    """The console's own listener: the console at `/admin`, and `/` leading there."""

    async def to_console(request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin/")

    root = web.Application()
    root.router.add_get("/", to_console)
    root.add_subapp("/admin", sub)
    return root
