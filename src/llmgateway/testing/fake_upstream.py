"""A fake LLM provider on real loopback HTTP: OpenAI, Gemini native and Gemini's
OpenAI-compatible endpoint, with faults chosen by key.

In tests: `async with FakeUpstream() as fake:` then point a provider at `fake.openai_base` or
`fake.gemini_base`, set faults with `fake.set_behavior(secret, Behavior(...))`, and assert on
`fake.calls(secret)`. As a process: `llmgateway fake-upstream`, driven over `/_fake/…`.

A key with no behaviour set is judged by its name: one containing `invalid`, `ratelimited`,
`noquota`, `flaky`, `slow`, `hang` or `drop` gets that fault; anything else is good.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

import orjson
import pydantic
from aiohttp import web

from llmgateway.observe.masking import fingerprint, mask
from llmgateway.testing import wire
from llmgateway.testing.faults import (
    BEHAVIOR_ADAPTER,
    BEHAVIOR_FIELDS,
    NAMED,
    Behavior,
    Dialect,
    bad_request,
    behavior_for_name,
    error_response,
    invalid_key,
    missing_key,
    no_quota,
    rate_limited,
    server_error,
)

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gemini-2.5-flash")
GEMINI_PAGE_SIZE = 50
"""Models per page of Gemini's list when the caller asks for no `pageSize` (as Gemini)."""
GEMINI_MAX_PAGE_SIZE = 1000
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """The last request a key made: for asserting where the key travelled."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass(slots=True)
class _Outage:
    status: int
    until: float | None


@dataclass(slots=True)
class _Answer:
    """A success answer: a whole body, or events to stream one by one."""

    body: bytes = b""
    events: tuple[bytes, ...] = ()
    content_type: str = _JSON
    streamed: bool = False


_Handler = Callable[[web.Request, bytes], "_Answer | web.Response"]
_Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        self._clock = clock
        self._rng = random.Random(seed)
        self._behaviors: dict[str, Behavior] = {}
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

    def set_outage(self, status: int = 503, seconds: float | None = None) -> None:
        """Answer every call with `status` for `seconds` (None: until `clear_outage()`)."""
        until = None if seconds is None else self._clock() + seconds
        self._outage = _Outage(status, until)

    def clear_outage(self) -> None:
        """End a provider-wide outage."""
        self._outage = None

    def reset(self) -> None:
        """Forget behaviours, the outage and every counter."""
        self._behaviors.clear()
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
        route = self._route
        app.add_routes(
            [
                web.post("/v1/chat/completions", route("openai", self._chat)),
                web.post("/v1/embeddings", route("openai", self._embeddings)),
                web.get("/v1/models", self._v1_models(route)),
                web.post("/v1beta/openai/chat/completions", route("compat", self._chat)),
                web.post("/v1beta/openai/embeddings", route("compat", self._embeddings)),
                web.get("/v1beta/openai/models", route("compat", self._openai_models)),
                web.get("/v1beta/models", route("gemini", self._gemini_models)),
                web.get("/v1beta/models/{target}", route("gemini", self._gemini_model)),
                web.get("/v1/models/{target}", route("gemini", self._gemini_model)),
                web.post("/v1beta/models/{target}", route("gemini", self._gemini_call)),
                web.post("/v1/models/{target}", route("gemini", self._gemini_call)),
                web.post("/_fake/behaviors", self._admin_behaviors),
                web.get("/_fake/stats", self._admin_stats),
                web.post("/_fake/reset", self._admin_reset),
                web.post("/_fake/outage", self._admin_outage),
            ]
        )
        return app

    def _v1_models(self, route: Callable[[Dialect, _Handler], _Endpoint]) -> _Endpoint:
        # `GET /v1/models` is OpenAI's list, or Gemini's (v1) for a caller using x-goog-api-key.
        openai = route("openai", self._openai_models)
        gemini = route("gemini", self._gemini_models)

        async def handle(request: web.Request) -> web.StreamResponse:
            native = "x-goog-api-key" in request.headers
            return await (gemini if native else openai)(request)

        return handle

    def _route(self, speaks: Dialect, answer: _Handler) -> _Endpoint:
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
        answer: _Handler,
    ) -> web.StreamResponse:
        secret, in_url = self._secret(request, speaks)
        if not secret:
            return missing_key(speaks)
        calls = self._record(request, secret, in_url)
        if in_url:
            message = "API key in the URL (?key=): send it in the x-goog-api-key header"
            return error_response(speaks, 400, message, "INVALID_ARGUMENT")
        outage = self._outage
        if outage is not None and (outage.until is None or self._clock() < outage.until):
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
        result = answer(request, await request.read())
        if isinstance(result, web.Response):
            return result
        return await self._send(request, result, behavior)

    def _secret(self, request: web.Request, speaks: Dialect) -> tuple[str, bool]:
        in_url = request.query.get("key")
        if in_url is not None:
            return in_url, True
        if speaks == "gemini":
            return request.headers.get("x-goog-api-key", ""), False
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
        return until is None or self._clock() < until

    async def _send(
        self, request: web.Request, answer: _Answer, behavior: Behavior
    ) -> web.StreamResponse:
        drop = behavior.drop_after_chunks
        if not answer.streamed and drop is None:
            return web.Response(body=answer.body, content_type=answer.content_type)
        response = web.StreamResponse(headers={"content-type": answer.content_type})
        if not answer.streamed:
            response.content_length = len(answer.body)
            await response.prepare(request)
            await response.write(answer.body[: len(answer.body) // 2])
            return _drop(request, response)
        response.enable_chunked_encoding()
        delay = self.chunk_delay if behavior.chunk_delay is None else behavior.chunk_delay
        try:
            await response.prepare(request)
            for index, event in enumerate(answer.events):
                if drop is not None and index >= drop:
                    return _drop(request, response)
                if delay > 0 and index > 0:
                    await asyncio.sleep(delay)
                await response.write(event)
            await response.write_eof()
        except ConnectionResetError:  # the client left mid-stream (a load run ending): no error
            pass
        return response

    # --- answers -------------------------------------------------------------------------------

    def _chat(self, request: web.Request, body: bytes) -> _Answer | web.Response:
        document = _json_object(body)
        if document is None:
            return bad_request(request, "the body is not a JSON object")
        model = document.get("model")
        if not isinstance(model, str) or not model:
            return bad_request(request, "you must provide a model parameter")
        if document.get("stream") is not True:
            return _Answer(body=wire.openai_completion(model, self.chunks))
        options = document.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        events = wire.openai_chunks(model, self.chunks, usage)
        return _Answer(events=events, content_type="text/event-stream", streamed=True)

    def _embeddings(self, request: web.Request, body: bytes) -> _Answer | web.Response:
        document = _json_object(body)
        if document is None or not isinstance(document.get("model"), str):
            return bad_request(request, "you must provide a model parameter")
        given = document.get("input")
        count = len(given) if isinstance(given, list) and given else 1
        as_base64 = document.get("encoding_format") == "base64"
        return _Answer(body=wire.openai_embeddings(document["model"], count, as_base64))

    def _openai_models(self, request: web.Request, body: bytes) -> _Answer:
        return _Answer(body=wire.openai_models(self.models))

    def _gemini_models(self, request: web.Request, body: bytes) -> _Answer | web.Response:
        size = request.query.get("pageSize", str(GEMINI_PAGE_SIZE))
        start = request.query.get("pageToken", "0")
        if not size.isdigit() or not start.isdigit():
            return error_response("gemini", 400, "Invalid page size or token.", "INVALID_ARGUMENT")
        first, count = int(start), min(max(int(size), 1), GEMINI_MAX_PAGE_SIZE)
        page = self.models[first : first + count]
        more = first + count < len(self.models)
        return _Answer(body=wire.gemini_models(page, str(first + count) if more else None))

    def _gemini_model(self, request: web.Request, body: bytes) -> _Answer:
        return _Answer(body=orjson.dumps(wire.gemini_model(request.match_info["target"])))

    def _gemini_call(self, request: web.Request, body: bytes) -> _Answer | web.Response:
        model, _, method = request.match_info["target"].partition(":")
        if _json_object(body) is None:
            return error_response(
                "gemini", 400, "Invalid JSON payload received.", "INVALID_ARGUMENT"
            )
        if method == "generateContent":
            return _Answer(body=wire.gemini_response(model, self.chunks))
        if method == "streamGenerateContent":
            sse = request.query.get("alt") == "sse"
            events = wire.gemini_chunks(model, self.chunks, sse)
            content_type = "text/event-stream" if sse else _JSON
            return _Answer(events=events, content_type=content_type, streamed=True)
        if method == "countTokens":
            return _Answer(body=b'{"totalTokens": %d}' % wire.PROMPT_TOKENS)
        if method in ("embedContent", "batchEmbedContents"):
            requests = _json_object(body) or {}
            batch = requests.get("requests")
            count = len(batch) if isinstance(batch, list) and batch else 1
            return _Answer(body=wire.gemini_embedding(count))
        message = f"Method {method!r} is not found for model {model!r}."
        return error_response("gemini", 404, message, "NOT_FOUND")

    # --- admin API -----------------------------------------------------------------------------

    async def _admin_behaviors(self, request: web.Request) -> web.Response:
        """`{"<secret>": {<Behavior fields>} | null, ...}`; `rate_limit_for_sec` sets a deadline
        relative to now."""
        document = _json_object(await request.read())
        if document is None:
            return _admin_error("expected a JSON object: {secret: {behavior fields} | null}")
        parsed: dict[str, Behavior | None] = {}
        for secret, spec in document.items():
            if spec is None:
                parsed[secret] = None
                continue
            behavior = self._parse_behavior(spec)
            if isinstance(behavior, str):
                return _admin_error(f"behavior for {mask(secret)}: {behavior}")
            parsed[secret] = behavior
        for secret, chosen in parsed.items():
            self.set_behavior(secret, chosen)
        return web.json_response({"ok": True, "keys": len(parsed)})

    def _parse_behavior(self, spec: Any) -> Behavior | str:
        if not isinstance(spec, dict):
            return "expected an object of behavior fields"
        spec = dict(spec)
        relative = spec.pop("rate_limit_for_sec", None)
        unknown = sorted(set(spec) - BEHAVIOR_FIELDS)
        if unknown:
            return f"unknown field(s) {unknown}; known: {sorted(BEHAVIOR_FIELDS)}"
        try:
            behavior = BEHAVIOR_ADAPTER.validate_python(spec)
            if relative is not None:
                seconds = float(relative)
                behavior = replace(behavior, rate_limit_until=self._clock() + seconds)
        except (pydantic.ValidationError, TypeError, ValueError) as exc:
            return str(exc).replace("\n", "; ")
        return behavior

    async def _admin_stats(self, request: web.Request) -> web.Response:
        counters = self._counters
        outage = self._outage
        stats = {
            "calls": {mask(secret): n for secret, n in counters.calls.items()},
            "calls_by_fingerprint": {
                fingerprint(secret): n for secret, n in counters.calls.items()
            },
            "total_calls": sum(counters.calls.values()),
            "key_in_url": counters.key_in_url,
            "open_requests": counters.open_requests,
            "peak_open_requests": counters.peak_open_requests,
            "outage": None if outage is None else {"status": outage.status},
        }
        return web.json_response(stats, dumps=lambda v: orjson.dumps(v).decode())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _admin_outage(self, request: web.Request) -> web.Response:
        """`{"status": 503, "seconds": 10}` starts an outage (no seconds: until cleared);
        `{"status": null}` or `{}` clears it."""
        document = _json_object(await request.read())
        if document is None:
            return _admin_error('expected a JSON object like {"status": 503, "seconds": 10}')
        status, seconds = document.get("status"), document.get("seconds")
        if status is None:
            self.clear_outage()
            return web.json_response({"ok": True, "outage": None})
        valid_seconds = seconds is None or (
            isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0
        )
        if not isinstance(status, int) or not 400 <= status <= 599 or not valid_seconds:
            return _admin_error("status must be an HTTP error code (400-599), seconds >= 0")
        self.set_outage(status, None if seconds is None else float(seconds))
        return web.json_response({"ok": True, "outage": {"status": status}})


# --- helpers -------------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection mid-body, as a provider that dies does."""
    if request.transport is not None:
        request.transport.abort()
    return response


def _admin_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def serve(
    host: str, port: int, chunks: int, chunk_delay: float, announce: Callable[[str], None]
) -> None:
    """Run a fake upstream until cancelled (Ctrl-C), announcing where it listens."""
    async with FakeUpstream(host=host, port=port, chunks=chunks, chunk_delay=chunk_delay) as fake:
        announce(f"fake upstream listening on {fake.url}")
        announce(f"  openai_like api_base_url: {fake.openai_base}")
        announce(f"  gemini api_base_url:      {fake.gemini_base}")
        announce(f"  keys naming a fault get it: {', '.join(NAMED)}; others are good")
        announce("  admin: POST /_fake/behaviors, GET /_fake/stats, POST /_fake/reset|outage")
        await asyncio.Event().wait()
