"""The gateway's ASGI entry: proxied paths go to the edge, everything else to the admin app.

A gateway may listen before its pool is loaded (`create_app(serve_early=True)`): `/healthz`
answers at once, and a proxied request that comes before the pool is loaded waits for it, up to
`STARTING_WAIT_SEC`, then is answered 503 `starting` with a Retry-After. Once the edge is in
place a request costs one attribute read more than calling the edge directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from llmgateway.conductor.admission import Refused
from llmgateway.conductor.endpoints import Edge
from llmgateway.conductor.responses import send_refusal
from llmgateway.providers.routes import Surface, shape_of

STARTING_WAIT_SEC = 10.0
"""How long a proxied request that comes during start-up waits for the pool to load."""

_STARTING = Refused(503, "starting", "The gateway is starting: its key pool is loading.", True, 1.0)


class Router:
    """Proxied paths (`/v1/…`, `/v1beta/…`) straight to the edge once `open()` put it in
    place; everything else to the Starlette admin app."""

    def __init__(self, admin: Starlette) -> None:
        self.admin = admin
        self.state = admin.state
        self.edge: Edge | None = None
        self._opened = asyncio.Event()

    def open(self, edge: Edge) -> None:
        """Serve proxied requests with `edge` from now on (the ones waiting go through)."""
        self.edge = edge
        self._opened.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: bytes = scope["raw_path"]  # the edge forwards the raw path, never the decoded
            if path.startswith((b"/v1/", b"/v1beta/")):
                edge = self.edge
                if edge is None:
                    edge = await self._edge_when_open()
                    if edge is None:
                        sent: Surface = "anthropic" if _anthropic_client(scope) else "openai"
                        shape = shape_of(sent, path)
                        await send_refusal(send, shape, _STARTING, secrets.token_hex(8))
                        return
                await edge(scope, receive, send)
                return
        await self.admin(scope, receive, send)

    async def _edge_when_open(self) -> Edge | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), STARTING_WAIT_SEC)
        return self.edge


def _anthropic_client(scope: Scope) -> bool:
    """Does the request come the Anthropic way (`x-api-key`, or `anthropic-version` as the
    Anthropic SDKs always send)?"""
    return any(name.lower() in _ANTHROPIC_HEADERS for name, _ in scope.get("headers", ()))


_ANTHROPIC_HEADERS = frozenset({b"x-api-key", b"anthropic-version"})
