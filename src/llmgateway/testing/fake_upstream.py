"""A fake LLM provider on real loopback HTTP: OpenAI (chat, the Responses API, embeddings),
Gemini native and Gemini's OpenAI-compatible endpoint, Anthropic's Messages API, with faults
chosen by key (the routes in `testing.fake_routes`).

In tests: `async with FakeUpstream() as fake:` then point a provider at `fake.openai_base`,
`fake.gemini_base` or `fake.anthropic_base`, set faults with
`fake.set_behavior(secret, Behavior(...))`, and assert on `fake.calls(secret)`. As a process:
`llmgateway fake-upstream`, driven over `/_fake/…`.

A key with no behaviour set is judged by its name: one containing `invalid`, `ratelimited`,
`noquota`, `flaky`, `slow`, `hang`, `drop`, `nomodel`, `contextlength`, `streamerror`,
`emptystream` or `stall` gets that fault; anything else is good. Models can be faulty for every
key: `set_missing_models()` (404, the model does not exist) and `set_context_limits()` (400,
context length exceeded for a request body over the limit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

from aiohttp import web

from llmgateway.testing import fake_answers as answers
from llmgateway.testing.fake_admin import admin_routes
from llmgateway.testing.fake_routes import Endpoint, Handler, provider_routes
from llmgateway.testing.faults import (
    NAMED,
    Behavior,
    Dialect,
    behavior_for_name,
    error_response,
    invalid_key,
    missing_key,
    model_fault,
    no_quota,
    rate_limited,
    server_error,
)

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gemini-2.5-flash",
    "claude-sonnet-4-5",
)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """The last request a key made: for asserting where the key travelled."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""  # its first 64 KiB, once the fake read it (a fault may answer before)
    peer: str | None = None  # the address the connection came from (which proxy, if any)


@dataclass(slots=True)
class _Outage:
    status: int
    until: float | None


@dataclass(slots=True)
class _Counters:
    calls: dict[str, int] = field(default_factory=dict)
    seen: dict[str, SeenRequest] = field(default_factory=dict)
    key_in_url: int = 0
    open_requests: int = 0
    peak_open_requests: int = 0
    open_by_key: dict[str, int] = field(default_factory=dict)
    peak_by_key: dict[str, int] = field(default_factory=dict)


class FakeUpstream:
    """The fake provider server. Use as `async with FakeUpstream() as fake:`.

    `chunks`/`chunk_delay` shape every streamed answer; `seed` makes `error_rate` exact;
    `clock` (seconds) times outages and rate-limit deadlines.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunks: int = 3,
        chunk_delay: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        models: tuple[str, ...] = DEFAULT_MODELS,
    ) -> None:
        self.host, self.port = host, port
        self.chunks, self.chunk_delay = max(1, chunks), chunk_delay
        self.models = models
        self.clock = clock  # times outages and rate-limit deadlines
        self._rng = random.Random(seed)
        self._behaviors: dict[str, Behavior] = {}
        self._missing: frozenset[str] = frozenset()
        self._limits: dict[str, int] = {}
        self._outage: _Outage | None = None
        self._counters = _Counters()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (the Gemini base URL too)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base(self) -> str:
        """The `api_base_url` of an openai_like provider pointed at this fake."""
        return f"{self.url}/v1"

    @property
    def gemini_base(self) -> str:
        """The `api_base_url` of a gemini provider pointed at this fake."""
        return self.url

    @property
    def anthropic_base(self) -> str:
        """The `api_base_url` of an anthropic provider pointed at this fake (its OpenAI
        endpoint, `/v1/chat/completions`, is the fake's OpenAI one)."""
        return f"{self.url}/v1"

    async def start(self) -> None:
        """Listen on `host:port` (port 0 picks a free one, then `port` is set)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._stopping.clear()
        self._runner = web.AppRunner(
            self._app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        # aiohttp's default backlog (128) drops SYNs when a gateway opens a few hundred
        # connections at once; the kernel retries after 1 s: a second of latency no real
        # provider adds (uvicorn listens with 2048)
        await web.SockSite(self._runner, sock, backlog=2048).start()

    async def stop(self) -> None:
        """Release hanging requests and close the server."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- control and observation -------------------------------------------------------------

    def set_behavior(self, secret: str, behavior: Behavior | None) -> None:
        """Give a key a behaviour (None: back to the naming convention)."""
        if behavior is None:
            self._behaviors.pop(secret, None)
        else:
            self._behaviors[secret] = behavior

    def behavior(self, secret: str) -> Behavior:
        """The behaviour a key gets now."""
        return self._behaviors.get(secret) or behavior_for_name(secret)

    def set_models(self, models: Iterable[str]) -> None:
        """The model names both models lists show from now on (Gemini's as `models/{name}`,
        in pages of `?pageSize=`, 50 by default and 1000 at most, as Gemini pages them)."""
        self.models = tuple(models)

    def set_missing_models(self, models: Iterable[str]) -> None:
        """Models every key is told do not exist (404 in the dialect's shape), from now on."""
        self._missing = frozenset(models)

    def set_context_limits(self, limits: Mapping[str, int]) -> None:
        """Per model, the most request-body bytes it takes; a longer request is told it
        exceeds the context window (400 in the dialect's shape), from now on."""
        self._limits = dict(limits)

    def set_outage(self, status: int = 503, seconds: float | None = None) -> None:
        """Answer every call with `status` for `seconds` (None: until `clear_outage()`)."""
        until = None if seconds is None else self.clock() + seconds
        self._outage = _Outage(status, until)

    def clear_outage(self) -> None:
        """End a provider-wide outage."""
        self._outage = None

    def reset(self) -> None:
        """Forget behaviours, model faults, the outage and every counter."""
        self._behaviors.clear()
        self._missing, self._limits = frozenset(), {}
        self._outage = None
        open_now = self._counters.open_requests
        self._counters = _Counters(open_requests=open_now, peak_open_requests=open_now)

    def calls(self, secret: str) -> int:
        """How many requests arrived with this key."""
        return self._counters.calls.get(secret, 0)

    def calls_by_key(self) -> dict[str, int]:
        """Requests per key."""
        return dict(self._counters.calls)

    def last_request(self, secret: str) -> SeenRequest | None:
        """The last request made with this key."""
        return self._counters.seen.get(secret)

    @property
    def outage_status(self) -> int | None:
        """The status of the outage set (even one whose time is up), or None."""
        return None if self._outage is None else self._outage.status

    @property
    def key_in_url(self) -> int:
        """Requests that carried a key in the URL (`?key=`); each was refused."""
        return self._counters.key_in_url

    @property
    def open_requests(self) -> int:
        """Requests being answered right now (leak checks: 0 when all is quiet)."""
        return self._counters.open_requests

    @property
    def peak_open_requests(self) -> int:
        """The most requests open at once since start or `reset()`."""
        return self._counters.peak_open_requests

    def peak_open(self, secret: str) -> int:
        """The most requests with this key open at once since start or `reset()`."""
        return self._counters.peak_by_key.get(secret, 0)

    # --- routes --------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([*provider_routes(self, self._route), *admin_routes(self)])
        return app

    def _route(self, speaks: Dialect, answer: Handler) -> Endpoint:
        async def handle(request: web.Request) -> web.StreamResponse:
            counters = self._counters
            counters.open_requests += 1
            counters.peak_open_requests = max(counters.peak_open_requests, counters.open_requests)
            secret = self._secret(request, speaks)[0]
            by_key = counters.open_by_key
            by_key[secret] = now_open = by_key.get(secret, 0) + 1
            counters.peak_by_key[secret] = max(counters.peak_by_key.get(secret, 0), now_open)
            try:
                return await self._serve(request, speaks, answer)
            finally:
                self._counters.open_requests -= 1
                by_key[secret] -= 1

        return handle

    async def _serve(
        self,
        request: web.Request,
        speaks: Dialect,
        answer: Handler,
    ) -> web.StreamResponse:
        secret, in_url = self._secret(request, speaks)
        if not secret:
            return missing_key(speaks)
        calls = self._record(request, secret, in_url)
        if in_url:
            message = "API key in the URL (?key=): send it in the x-goog-api-key header"
            return error_response(speaks, 400, message, "INVALID_ARGUMENT")
        outage = self._outage
        if outage is not None and (outage.until is None or self.clock() < outage.until):
            return server_error(speaks, outage.status)
        behavior = self.behavior(secret)
        if behavior.delay > 0:
            await asyncio.sleep(behavior.delay)
        if behavior.hang:
            await self._stopping.wait()
            return server_error(speaks, 503)
        fault = self._fault(speaks, secret, behavior, calls)
        if fault is not None:
            return fault
        body = await request.read()
        seen = self._counters.seen
        seen[secret] = dataclasses.replace(seen[secret], body=body[:65536])
        if behavior.no_model or behavior.context_length or self._missing or self._limits:
            fault = self._model_fault(request, speaks, body, behavior)
            if fault is not None:
                return fault
        result = answer(request, body)
        if isinstance(result, web.Response):
            return result
        result = answers.faulty(result, behavior, speaks)
        return await answers.send(request, result, behavior, self.chunk_delay)

    def _model_fault(
        self, request: web.Request, speaks: Dialect, body: bytes, behavior: Behavior
    ) -> web.Response | None:
        model = answers.model_of(request, speaks, body)
        if not model:
            return None
        if model in self._missing:
            behavior = replace(behavior, no_model=True)
        return model_fault(speaks, request, model, body, behavior, self._limits.get(model))

    def _secret(self, request: web.Request, speaks: Dialect) -> tuple[str, bool]:
        in_url = request.query.get("key")
        if in_url is not None:
            return in_url, True
        if speaks == "gemini":
            return request.headers.get("x-goog-api-key", ""), False
        if speaks == "anthropic" and "x-api-key" in request.headers:
            return request.headers["x-api-key"], False  # else a Bearer, as the SDK sends it
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return (token.strip() if scheme.lower() == "bearer" else ""), False

    def _record(self, request: web.Request, secret: str, in_url: bool) -> int:
        counters = self._counters
        calls = counters.calls[secret] = counters.calls.get(secret, 0) + 1
        counters.key_in_url += in_url
        counters.seen[secret] = SeenRequest(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            peer=request.remote,
        )
        return calls

    def _fault(
        self, speaks: Dialect, secret: str, behavior: Behavior, calls: int
    ) -> web.Response | None:
        if behavior.invalid:
            return invalid_key(speaks, secret)
        if behavior.no_quota:
            return no_quota(speaks)
        if behavior.rate_limited and self._still_limited(behavior, calls):
            return rate_limited(speaks, behavior.retry_after, behavior.retry_style)
        if behavior.error_rate > 0 and self._rng.random() < behavior.error_rate:
            return server_error(speaks, behavior.error_status)
        return None

    def _still_limited(self, behavior: Behavior, calls: int) -> bool:
        if behavior.rate_limit_calls is not None and calls > behavior.rate_limit_calls:
            return False
        until = behavior.rate_limit_until
        return until is None or self.clock() < until


async def serve(
    host: str, port: int, chunks: int, chunk_delay: float, announce: Callable[[str], None]
) -> None:
    """Run a fake upstream until cancelled (Ctrl-C), announcing where it listens."""
    async with FakeUpstream(host=host, port=port, chunks=chunks, chunk_delay=chunk_delay) as fake:
        announce(f"fake upstream listening on {fake.url}")
        announce(f"  openai_like api_base_url: {fake.openai_base}")
        announce(f"  gemini api_base_url:      {fake.gemini_base}")
        announce(f"  anthropic api_base_url:   {fake.anthropic_base}")
        announce(f"  keys naming a fault get it: {', '.join(NAMED)}; others are good")
        announce("  admin: POST /_fake/behaviors|models|reset|outage, GET /_fake/stats")
        await asyncio.Event().wait()
