"""Running an ASGI app under uvicorn inside the current event loop (tests, `serve`, `demo`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp


def uvicorn_config(app: ASGIApp | str, host: str, port: int, **extra: object) -> uvicorn.Config:
    """The uvicorn settings the gateway always uses: uvloop, httptools, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        ws="none",  # no WebSocket routes: leaves the websockets library unloaded
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the gateway never looks at the client's address
        timeout_graceful_shutdown=5,
        **extra,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` in this loop until the block ends; yields its base URL (`http://host:port`).

    Port 0 takes a free port. The app's lifespan runs before the block starts, so the app is
    ready when the URL is handed out; a failing start-up raises here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn_config(app, host, sock.getsockname()[1])
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
