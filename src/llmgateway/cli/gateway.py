"""`llmgateway gateway` (the Conductor, one process or several) and `llmgateway serve` (the
gateway and the Keeper in one process)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

import click

from llmgateway.cli.prepare import prepare_store, sync_beside, sync_in_child, sync_in_process
from llmgateway.cli.startup import config_option, load, setup_logging
from llmgateway.cli.tokens import TokenCheck, admin_hosts, guard_tokens, metrics_hosts

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.keeper.following import KeeperSwap
    from llmgateway.observe.logs import Redactor
    from llmgateway.observe.metrics import Metrics
    from llmgateway.reloading import Following
    from llmgateway.store import Store


_host_option = click.option(
    "--host", metavar="HOST", help="Listen address (default: gateway.host)."
)
_port_option = click.option(
    "--port", type=click.IntRange(0, 65535), help="Listen port (default: gateway.port)."
)


@click.command()
@config_option
@_host_option
@_port_option
@click.option(
    "--workers", type=click.IntRange(1), help="Server processes (default: gateway.workers)."
)
def gateway(config: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """The Conductor: serve the OpenAI and Gemini routes from the healthy key pool.

    SIGHUP re-reads the config file (with --workers, each process does), as does a change of
    the file under gateway.watch_config and `llmgateway reload`: requests in flight finish on
    the config they started with.

    At start it applies pending migrations and runs one key-file sync (in the background when
    the store is up to date: it serves the store's keys meanwhile), then leaves syncing and
    probing to the Keeper (`llmgateway worker`). Stops on Ctrl-C or SIGTERM.
    """
    from llmgateway.conductor.serving import gateway_server, serve_workers
    from llmgateway.config.load import config_path
    from llmgateway.reloading import Following

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app follows its config file
    settings = load(config, logs=True)
    # the keys come from the store, teaching the log redactor as they load (`create_app`)
    redactor = setup_logging(settings, "gateway", key_files=False)
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    hosts = metrics_hosts(settings, host, keeper=False)
    guard_tokens(settings, host, hosts)
    follow = Following(config_path(config), TokenCheck(host, hosts))
    sync_later = prepare_store(settings, config)  # a one-line error if the store fails
    workers = workers or settings.gateway.workers
    if workers > 1:
        with sync_beside(config) if sync_later else contextlib.nullcontext():
            serve_workers(settings, host, port, workers, follow)
        return
    from llmgateway.conductor.app import create_app

    after_load = sync_in_child(config) if sync_later else None
    app = create_app(
        settings,
        prepare=False,
        tune_process=True,
        serve_early=True,
        after_load=after_load,
        log_secrets=redactor,
        follow=follow,
    )
    # uvicorn stops on Ctrl-C, then raises the signal again: a stop asked for, not an error
    with contextlib.suppress(KeyboardInterrupt):
        gateway_server(app, settings, host, port).run()
    click.echo("stopped")


@click.command()
@config_option
@_host_option
@_port_option
def serve(config: str | None, host: str | None, port: int | None) -> None:
    """The gateway and the Keeper in one process: the embedded, single-machine setup."""
    import uvloop

    from llmgateway.config.load import config_path
    from llmgateway.reloading import Following

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app follows its config file
    settings = load(config, logs=True)
    redactor = setup_logging(settings, "serve", key_files=False)  # as `gateway` does
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    hosts, consoles = metrics_hosts(settings, host, keeper=True), admin_hosts(settings)
    guard_tokens(settings, host, hosts, consoles)
    follow = Following(config_path(config), TokenCheck(host, hosts, consoles))
    sync_later = prepare_store(settings, config)  # as `gateway` does
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve_both(settings, host, port, sync_later, redactor, follow))
    click.echo("stopped")


async def _serve_both(
    settings: Settings,
    host: str,
    port: int,
    sync_later: bool,
    redactor: Redactor,
    follow: Following,
) -> None:
    """The gateway, and the Keeper once the pool is loaded and the start-up sync (if still to
    run) is done: neither competes with the pool's load. The gateway follows the config file
    and hands each config it applies to the Keeper."""
    from llmgateway.conductor.app import create_app
    from llmgateway.conductor.serving import gateway_server
    from llmgateway.keeper.following import KeeperSwap
    from llmgateway.observe.metrics import Metrics
    from llmgateway.store import Store

    metrics = Metrics.create()  # one set: the gateway's /metrics shows the Keeper's too
    started = asyncio.Event()
    sync = sync_in_process(settings) if sync_later else None

    async def after_load(store: Store) -> None:
        try:
            if sync is not None:
                await sync(store)
        finally:
            started.set()

    app = create_app(
        settings,
        prepare=False,
        metrics=metrics,
        tune_process=True,
        serve_early=True,
        after_load=after_load,
        log_secrets=redactor,
        follow=follow,
        on_reload=(swap := KeeperSwap(settings)).apply,
    )
    server = gateway_server(app, settings, host, port)
    stop = asyncio.Event()
    async with await Store.configured(settings.database) as store:
        keeper = asyncio.create_task(_keeper(swap, store, metrics, started, stop))
        try:
            await server.serve()
        finally:
            stop.set()
            await keeper


async def _keeper(
    swap: KeeperSwap, store: Store, metrics: Metrics, start: asyncio.Event, stop: asyncio.Event
) -> None:
    """The Keeper of `serve`, from when `start` is set until `stop` is."""
    waits = [asyncio.ensure_future(start.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if stop.is_set():
        return
    from llmgateway.console.listener import keeper_http

    # the gateway serves /metrics (one set for both); the Keeper's listener has the console
    async with keeper_http(swap.settings, metrics, store, serve_metrics=False):
        await swap.run(store, metrics, stop)
