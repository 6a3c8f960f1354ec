"""What the edge checks before a request may take a key: its body (size, pace, and the memory
all bodies hold at once) and the model it names. A refusal becomes an error in the client's API
shape; nothing here touches a key, a breaker or the store.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import orjson
from starlette.types import Message, Receive

from llmgateway.providers import form
from llmgateway.providers.catalog import Catalog
from llmgateway.providers.routes import Match, Surface

_SHOWN = 80  # characters of a client's model name repeated in an error
# the key "model" with any of its letters written as a JSON escape (`"\u006dodel"`)
_ESCAPED_MODEL = re.compile(
    rb'"(?:m|\\u006[Dd])(?:o|\\u006[Ff])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[Cc])"'
)


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request is answered without taking a key. `close`: the connection cannot carry
    another request (its body was left unread)."""

    status: int
    code: str
    message: str
    close: bool = False
    retry_after: float | None = None
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (a client's limits)


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


@dataclass(slots=True)
class BodyBudget:
    """Request bodies held in memory at once by this process (`gateway.max_inflight_body_bytes`):
    a request whose body would go beyond is refused with 503 instead of growing the heap."""

    limit: int
    held: int = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes, if that stays within the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Release `size` bytes held."""
        self.held -= size


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The edge's limits on one request body."""

    max_bytes: int  # gateway.max_body_bytes
    silence_sec: float  # gateway.client_body_timeout_sec: the longest pause between two parts


async def read_body(
    receive: Receive,
    declared: str | None,
    limits: BodyLimits,
    budget: BodyBudget,
    *,
    arrived: bool = False,
) -> bytes | Refused:
    """The whole request body, held in `budget` (the caller gives `len(body)` back when the
    request ends), or why it is refused. `arrived`: the server holds the whole body already.
    Raises ClientGone when the client leaves mid-upload."""
    if declared is not None and declared.isdigit():
        size = int(declared)
        if size > limits.max_bytes:
            return _too_large(limits.max_bytes)
        if budget.held + size > budget.limit:
            return _busy()
    if arrived:  # most requests: the body came with the head, nothing can stall
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if len(body) > limits.max_bytes:
                return _too_large(limits.max_bytes)
            return body if budget.take(len(body)) else _busy()
        return await _paced(receive, limits, budget, message)
    return await _paced(receive, limits, budget, None)


async def _paced(
    receive: Receive, limits: BodyLimits, budget: BodyBudget, message: Message | None
) -> bytes | Refused:
    """The body read part by part, each within `limits.silence_sec` of the one before
    (`message`: one already received)."""
    chunks: list[bytes] = []
    held = 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(limits.silence_sec) as timer:
            while True:
                if message is None:
                    message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk: bytes = message.get("body", b"")
                if chunk:
                    if held + len(chunk) > limits.max_bytes:
                        budget.give(held)
                        return _too_large(limits.max_bytes)
                    if not budget.take(len(chunk)):
                        budget.give(held)
                        return _busy()
                    held += len(chunk)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
                message = None
                timer.reschedule(loop.time() + limits.silence_sec)
    except TimeoutError:
        budget.give(held)
        why = f"The request body stalled: nothing arrived for {limits.silence_sec:g} s."
        return Refused(408, "request_timeout", why, close=True)
    except BaseException:
        budget.give(held)
        raise


def _too_large(limit: int) -> Refused:
    message = f"The request body is larger than the gateway's limit of {limit} bytes."
    return Refused(413, "request_too_large", message, close=True)


def _busy() -> Refused:
    message = "The gateway holds too many request bodies right now; retry shortly."
    return Refused(503, "gateway_busy", message, close=True, retry_after=1.0)


@dataclass(frozen=True, slots=True)
class Named:
    """The model a request names (None: it names none) and whether it asks to stream."""

    model: str | None
    stream: bool
    options: bool = False  # the body sets `stream_options` at its top level
    plain: bool = False  # the JSON body names `model` once, with no `\\u` escape (`rewrite_model`)


def named_model(match: Match, body: bytes, content_type: str) -> Named | Refused:
    """Where the route says the model is: the path, a multipart form field, or the JSON body."""
    route = match.route
    if route.model == "path":
        return Named(match.path_model, route.stream)
    if route.model == "none":
        return Named(None, False)
    if route.model in ("form", "optional"):
        try:
            boundary = form.boundary_of(content_type)
            if boundary is not None:
                return Named(form.form_field(body, boundary, "model"), False)
        except form.FormError as error:
            return Refused(400, "invalid_request", f"The multipart form is unusable: {error}.")
    return json_model(body, required=route.model != "optional")


def json_model(body: bytes, *, required: bool) -> Named | Refused:
    """The `model` and `stream` of a JSON object body (`required`: the body must be one)."""
    if body[:1] != b"{" and not body.lstrip().startswith(b"{"):
        if required or body.strip():
            return Refused(400, "invalid_request", "The request body must be a JSON object.")
        return Named(None, False)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return Refused(400, "invalid_request", f"The request body is not valid JSON ({error}).")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        return Refused(400, "invalid_request", "`model` must be a string.")
    named = body.count(b'"model"')
    escaped = b"\\u" in body
    if named > 1 or (escaped and len(_ESCAPED_MODEL.findall(body)) > 1):
        # two `"model"` strings, escaped ones included: are two of them keys of one object?
        try:
            twice = _names_model_twice(body)
        except RecursionError:  # nested deeper than the stdlib parser goes (orjson went)
            message = "The request body nests objects and arrays too deeply."
            return Refused(400, "invalid_request", message)
        if twice:
            # parsers differ on which of two keys wins: the upstream might run the other one
            return Refused(400, "invalid_request", "The request body names `model` twice.")
    plain = named == 1 and not escaped
    return Named(model or None, data.get("stream") is True, "stream_options" in data, plain)


def _names_model_twice(body: bytes) -> bool:
    seen = 0

    def count(pairs: list[tuple[str, object]]) -> dict[str, object]:
        nonlocal seen
        seen = max(seen, sum(1 for key, _ in pairs if key == "model"))
        return dict(pairs)

    json.loads(body, object_pairs_hook=count)
    return seen > 1


def target_refusal(api: Surface | None, path: str | None, query: str | None) -> Refused:
    """Why a request whose surface (None: no surface serves the path), raw path or query did
    not pass `providers.target`'s checks is refused."""
    if api is None:
        return Refused(404, "not_found", "This token's provider does not serve this path.")
    if path is None:
        message = (
            "The request path holds characters or segments the gateway does not forward "
            "(control characters, spaces, '#', '\\', dot-segments, encoded '/' or '\\', "
            "double encoding, or bytes outside RFC 3986)."
        )
        return Refused(400, "invalid_path", message)
    message = "The query string holds characters outside RFC 3986; percent-encode them."
    return Refused(400, "invalid_query", message)


def resolve(catalog: Catalog, match: Match, model: str | None, default_model: str) -> str | Refused:
    """The configured model (name or pattern) that serves a request for `model`: its status
    scope (for a route that names none, the entry serving `default_model`)."""
    route = match.route
    if model is None:
        if route.model in ("optional", "none"):
            return catalog.resolve(default_model) or default_model
        message = "The request must name a model (the gateway does not let the upstream pick)."
        return Refused(400, "model_required", message)
    entry = catalog.resolve(model)
    if entry is None or (route.only is not None and entry not in route.only):
        shown = model if len(model) <= _SHOWN else model[:_SHOWN] + "…"
        message = f"The model {shown!r} is not served here; GET the models list to see which are."
        return Refused(404, "model_not_found", message)
    return entry
