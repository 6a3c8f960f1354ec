"""`llmgateway gateway` (the Conductor, one process or several) and `llmgateway serve` (the
gateway and the Keeper in one process)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, setup_logging
from llmgateway.cli.tokens import guard_tokens, metrics_hosts

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings


def _prepare_store(config: str | None) -> None:
    """Migrations and one file sync in a child process, so that the gateway never loads what
    only they need (Alembic, the parsed key files): its resident memory stays small."""
    import subprocess
    import sys

    from llmgateway.config.load import config_path

    # the environment file was read here already, into the environment the child inherits
    command = [sys.executable, "-m", "llmgateway", "--env-file", "none", "db", "upgrade", "--sync"]
    done = subprocess.run([*command, "--config", str(config_path(config))], check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(done.returncode)


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

    It applies migrations and runs one key-file sync at start, then leaves syncing and probing
    to the Keeper (`llmgateway worker`). Stops on Ctrl-C or SIGTERM.
    """
    from llmgateway.conductor.serving import gateway_server, serve_workers

    settings = load(config, logs=True)
    setup_logging(settings, "gateway")
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    guard_tokens(settings, host, metrics_hosts(settings, host, keeper=False))
    _prepare_store(config)  # migrations and a file sync, with a one-line error if the store fails
    workers = workers or settings.gateway.workers
    if workers > 1:
        serve_workers(settings, host, port, workers)
        return
    from llmgateway.conductor.app import create_app

    app = create_app(settings, prepare=False, tune_process=True)
    gateway_server(app, settings, host, port).run()


@click.command()
@config_option
@_host_option
@_port_option
def serve(config: str | None, host: str | None, port: int | None) -> None:
    """The gateway and the Keeper in one process: the embedded, single-machine setup."""
    import uvloop

    settings = load(config, logs=True)
    setup_logging(settings, "serve")
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    guard_tokens(settings, host, metrics_hosts(settings, host, keeper=True))
    _prepare_store(config)  # as `gateway` does: migrations and a file sync, once, before serving
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve_both(settings, host, port))
    click.echo("stopped")


async def _serve_both(settings: Settings, host: str, port: int) -> None:
    from llmgateway.conductor.app import create_app
    from llmgateway.conductor.serving import gateway_server
    from llmgateway.keeper.run import Keeper
    from llmgateway.observe.metrics import Metrics
    from llmgateway.store import Store

    metrics = Metrics.create()  # one set: the gateway's /metrics shows the Keeper's too
    app = create_app(settings, prepare=False, metrics=metrics, tune_process=True)
    server = gateway_server(app, settings, host, port)
    stop = asyncio.Event()
    async with await Store.configured(settings.database) as store:
        run = Keeper(settings, store, metrics=metrics).run(stop)
        keeper = asyncio.create_task(run, name="keeper")
        try:
            await server.serve()
        finally:
            stop.set()
            await keeper
