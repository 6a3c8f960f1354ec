"""Serving the metrics over HTTP: the Bearer check, the gateway's `/metrics` endpoint, the
Keeper's own metrics port, and the multiprocess folder of `gateway --workers N`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmgateway.config.settings import MetricsSettings, Settings
from llmgateway.observe.metrics import MULTIPROC_ENV, KeyCount, Metrics, store_key_counts
from llmgateway.observe.store_counts import StoreCounts
from llmgateway.store import Store

if TYPE_CHECKING:
    from aiohttp import web

_REFUSED = {"error": "metrics need 'Authorization: Bearer <metrics.access_token>'"}


def authorized(header: str | None, token: str, *, open_to_all: bool = False) -> bool:
    """Whether a request with this Authorization header may read the metrics and the readiness
    details: always with `open_to_all` (`metrics.allow_unauthenticated`), never when `token`
    is empty, else when the header carries `token` as a Bearer token (constant-time compare)."""
    if open_to_all:
        return True
    if not token or not header or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def metrics_served(access: MetricsSettings) -> bool:
    """Whether `/metrics` exists: enabled, and either behind `access_token` or opened on
    purpose with `allow_unauthenticated` (an empty token turns it off, as in the original)."""
    return access.enabled and (bool(access.access_token) or access.allow_unauthenticated)


def request_authorized(header: str | None, access: MetricsSettings) -> bool:
    """`authorized()` with the metrics settings."""
    return authorized(header, access.access_token, open_to_all=access.allow_unauthenticated)


def metrics_endpoint(
    metrics: Metrics,
    access: MetricsSettings,
    keys: Callable[[], Awaitable[Iterable[KeyCount]]],
    stored: StoreCounts | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for `/metrics`, behind the metrics token (see `authorized`), with
    the key counts of `keys` and, from `stored`, `llm_gateway_keys_total`."""

    async def endpoint(request: Request) -> Response:
        if not request_authorized(request.headers.get("authorization"), access):
            return JSONResponse(
                _REFUSED,
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        body = metrics.exposition(await keys(), None if stored is None else stored.counts)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return endpoint


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """Set `PROMETHEUS_MULTIPROC_DIR` to a fresh folder for the processes started inside,
    and remove the folder afterwards. A folder the environment already names is used as is."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    folder = tempfile.mkdtemp(prefix="llmgateway-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(
    metrics: Metrics,
    access: MetricsSettings,
    stored: StoreCounts | None,
    host: str,
    port: int,
    admin: web.Application | None = None,
) -> AsyncIterator[str]:
    """Serve `/healthz`, `/metrics` when `metrics_served(access)` (every key count taken from
    `stored`), and the console's sub-application `admin` at `/admin` when given, on host:port in
    this loop (aiohttp: no signal handling of its own, so it fits inside the Keeper's
    process); yields the URL."""
    from aiohttp import web  # the Keeper's only: a gateway process never loads aiohttp's server

    async def handle(request: web.Request) -> web.Response:
        if not request_authorized(request.headers.get("authorization"), access):
            return web.json_response(
                _REFUSED,
                status=401,
                headers={"www-authenticate": "Bearer"},
            )
        counts = [] if stored is None else stored.counts
        body = metrics.exposition(store_key_counts(counts), counts)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def alive(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    if metrics_served(access) and stored is not None:
        app.router.add_get("/metrics", handle)
    app.router.add_get("/healthz", alive)
    if admin is not None:
        app.add_subapp("/admin", admin)
    async with listening(app, host, port) as url:
        yield url


@contextlib.asynccontextmanager
async def listening(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve `app` on host:port in this loop until the block ends; yields its URL (with the
    port the system chose, for port 0)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def keeper_metrics(
    settings: Settings,
    metrics: Metrics,
    store: Store,
    admin: web.Application | None = None,
    *,
    serve_metrics: bool = True,
) -> AsyncIterator[StoreCounts | None]:
    """The Keeper's `/healthz` and `/metrics` on `worker.metrics_host:metrics_port` (off when
    the port is 0, or when `metrics.enabled` is false and no console `admin` is mounted there;
    `/metrics` is 404 without a metrics token unless `allow_unauthenticated`, and not served
    without `serve_metrics`: `serve` has the gateway's). Its key counts (`llmgateway_keys`,
    `llmgateway_key_states`, `llm_gateway_keys_total`) are the store's, read once at start and
    then in the background (`StoreCounts`, yielded; None when /metrics is not served)."""
    worker = settings.worker
    shown = settings.metrics.enabled and serve_metrics
    if worker.metrics_port == 0 or not (shown or admin is not None):
        yield None
        return
    host, port = worker.metrics_host, worker.metrics_port
    if not shown:
        async with serving(metrics, settings.metrics, None, host, port, admin):
            yield None
        return
    stored = StoreCounts(store.status_counts)
    async with reading(stored), serving(metrics, settings.metrics, stored, host, port, admin):
        yield stored


@contextlib.asynccontextmanager
async def reading(stored: StoreCounts) -> AsyncIterator[None]:
    """Read `stored` once, then keep it current in a background task until the block ends."""
    await stored.refresh()
    task = asyncio.create_task(stored.follow(), name="store-key-counts")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
