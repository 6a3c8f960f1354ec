"""Running an ASGI app under uvicorn inside the current event loop (tests, `serve`, `demo`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from llmgateway.conductor.edge import EdgeLimits, protocol_factory


def uvicorn_config(
    app: ASGIApp | str, host: str, port: int, limits: EdgeLimits, **extra: object
) -> uvicorn.Config:
    """The uvicorn settings the gateway always uses (one worker or several, `serve`, the demo,
    tests): uvloop, httptools with the edge's limits, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_factory(limits),
        lifespan="on",
        ws="none",  # no WebSocket routes: leaves the websockets library unloaded
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the gateway never looks at the client's address
        timeout_graceful_shutdown=5,
        **extra,  # type: ignore[arg-type]
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


@contextlib.asynccontextmanager
async def running(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: EdgeLimits | None = None,
    **extra: object,
) -> AsyncIterator[str]:
    """Serve `app` in this loop until the block ends; yields its base URL (`http://host:port`).
    `limits` default to the gateway's defaults; `extra` are more uvicorn settings.

    Port 0 takes a free port. The app's lifespan runs before the block starts, so the app is
    ready when the URL is handed out; a failing start-up raises here.
    """
    sock = listening_socket(host, port)
    config = uvicorn_config(app, host, sock.getsockname()[1], limits or EdgeLimits(), **extra)
    config.loop = "none"
    server = uvicorn.Server(config)
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
