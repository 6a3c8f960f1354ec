"""Serving the gateway under uvicorn: the one place its uvicorn settings are made, for every way
it runs (`gateway` with one process or several, `serve`, the demo, tests).

Several processes (`gateway --workers N`) are uvicorn's supervisor over N spawned processes on
one socket. Each gets the parent's validated settings with its app factory (`worker_app`,
pickled by the spawn), so a worker builds the very app the parent checked: nothing travels
through the environment but prometheus-client's `PROMETHEUS_MULTIPROC_DIR`, which that library
reads at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp

from llmgateway.conductor.edge import EdgeLimits, protocol_factory

if TYPE_CHECKING:
    from uvicorn.supervisors import Multiprocess

    from llmgateway.config.settings import Settings
    from llmgateway.reloading import Following

log = logging.getLogger("llmgateway.app")

GRACEFUL_SHUTDOWN_SEC = 5
"""At a stop, how long requests in flight may take to finish before their connections close."""


def uvicorn_config(
    app: ASGIApp | Callable[[], ASGIApp], host: str, port: int, limits: EdgeLimits, **extra: object
) -> uvicorn.Config:
    """The uvicorn settings the gateway always uses: uvloop, httptools with the edge's limits,
    neither uvicorn's access log nor its colours, `GRACEFUL_SHUTDOWN_SEC`. `extra` are more
    uvicorn settings."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_factory(limits),
        lifespan="on",
        ws="none",  # no WebSocket routes: leaves the websockets library unloaded
        access_log=False,  # the gateway's own (`observe.access`), without the query string
        log_config=None,
        use_colors=False,
        server_header=False,
        proxy_headers=False,  # the gateway never looks at the client's address
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SEC,
        **extra,  # type: ignore[arg-type]
    )


def gateway_server(app: ASGIApp, settings: Settings, host: str, port: int) -> uvicorn.Server:
    """The server of one gateway process (`gateway`, `serve`), with the edge limits of
    `settings.gateway`; `run()` it, or `await serve()` it in a running loop."""
    return uvicorn.Server(uvicorn_config(app, host, port, EdgeLimits.of(settings.gateway)))


def serve_workers(
    settings: Settings, host: str, port: int, workers: int, follow: Following | None = None
) -> None:
    """`gateway --workers N`: N gateway processes on one socket until Ctrl-C or SIGTERM, under
    uvicorn's supervisor (it restarts a process that dies; SIGHUP is relayed to each process,
    which re-reads its config when it follows one, rather than restarting them). Their metrics
    add up in a shared folder, removed at the end."""
    from llmgateway.observe.metrics_http import multiprocess_dir

    limits = EdgeLimits.of(settings.gateway)
    with multiprocess_dir():
        factory = functools.partial(worker_app, settings, follow)
        config = uvicorn_config(factory, host, port, limits, factory=True, workers=workers)
        _relaying_supervisor()(config, sockets=[config.bind_socket()]).run()


def _relaying_supervisor() -> type[Multiprocess]:
    """uvicorn's supervisor, with SIGHUP relayed to the processes instead of restarting them
    (a restart would drop the streams in flight)."""
    from uvicorn.supervisors import Multiprocess

    class Relaying(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)
            log.info("SIGHUP relayed to %d gateway processes", len(self.processes))

    return Relaying


def worker_app(settings: Settings, follow: Following | None = None) -> ASGIApp:
    """The app of one process of `serve_workers`, built in that process from the settings the
    parent handed over (the parent applied pending migrations before, and syncs the files
    beside them); it listens while its pool loads."""
    from llmgateway.conductor.app import create_app
    from llmgateway.observe.logs import setup

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its app follows the config file
    # a spawned process starts with no logging set up
    redactor = setup(settings, f"gateway-{os.getpid()}", key_files=False)
    return create_app(
        settings,
        prepare=False,
        tune_process=True,
        serve_early=True,
        log_secrets=redactor,
        follow=follow,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn to serve on (port 0: any free port).

    Made with the protocol named (IPPROTO_TCP): asyncio sets TCP_NODELAY only on sockets that
    say they are TCP, and without it a response written in two parts (head, then body) waits
    for the client's delayed ACK, ~40 ms per request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling, for a caller that handles signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: EdgeLimits | None = None,
    *,
    handle_signals: bool = True,
    **extra: object,
) -> AsyncIterator[str]:
    """Serve `app` in this loop until the block ends; yields its base URL (`http://host:port`).
    `limits` default to the gateway's defaults; `extra` are more uvicorn settings. Without
    `handle_signals`, SIGINT and SIGTERM are left to the caller (the demo stops on its own).

    Port 0 takes a free port. The app's lifespan runs before the block starts, so the app is
    ready when the URL is handed out; a failing start-up raises here.
    """
    sock = listening_socket(host, port)
    config = uvicorn_config(app, host, sock.getsockname()[1], limits or EdgeLimits(), **extra)
    config.loop = "none"
    server = uvicorn.Server(config) if handle_signals else _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
