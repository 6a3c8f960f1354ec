"""The HTTP edge: a raw ASGI handler for the proxied routes (`/v1/…`, `/v1beta/…`).

Per request it reads only what it must (the token, `model` and `stream`), hands the raw body to
the attempt loop, relays the answer back chunk by chunk (`responses.py`), and turns every
failure into an error in the client's API shape. What the request holds of its provider is its
`Claim`, ended in one `finally`: a client disconnect cancels the upstream call at once and frees
the key.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.types import Receive, Scope, Send

from llmgateway.conductor.admission import (
    BodyBudget,
    BodyLimits,
    ClientGone,
    Named,
    Refused,
    named_model,
    read_body,
    resolve,
    target_refusal,
)
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.call import Call, Provider
from llmgateway.conductor.edge import BODY_ARRIVED, ON_DISCONNECT
from llmgateway.conductor.responses import JSON, send_refusal, send_whole
from llmgateway.conductor.route_state import Routing
from llmgateway.conductor.routing import read_granted, serve_client, serve_route
from llmgateway.conductor.serve_call import build_call, serve_call, watched
from llmgateway.config.route_table import token_digest
from llmgateway.observe import logs
from llmgateway.observe.access import AccessLog, Refusal, TokenRefusals, client_address, shown_path
from llmgateway.observe.metrics import NO_PROVIDER
from llmgateway.observe.provider_metrics import OTHER_MODEL, Timing
from llmgateway.providers import anthropic, gemini, openai, target
from llmgateway.providers.routes import Match, Surface, shape_of, surface_of

log = logging.getLogger("llmgateway.api")


_NO_TOKEN = (
    "Missing or invalid gateway token. Send it as a Bearer token (OpenAI format), "
    "as x-goog-api-key (Gemini format) or as x-api-key (Anthropic format)."
)


@dataclass(frozen=True, slots=True)
class Edge:
    """The proxied routes of one gateway process.

    Before a key is taken, every request passes the same checks, each answered in the client's
    API shape: its token (401, counted and logged by `TokenRefusals`), its raw path and query
    (400 `invalid_path`/`invalid_query`), the provider's route allow-list (404), its body (413,
    408, 503) and its model (400 `model_required`, 404 `model_not_found`). Only then is the
    upstream request built, from the validated parts alone. `AccessLog` writes the requests'
    `request done` lines."""

    attempt_loop: AttemptLoop
    tokens: Mapping[bytes, tuple[str, Provider]]  # token digest → (token, provider)
    body_limits: BodyLimits
    bodies: BodyBudget
    access: AccessLog
    refusals: TokenRefusals
    routing: Routing | None = None  # routes and gateway-wide tokens (`gateway.tokens`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        request_id = _request_id(headers.get("x-request-id"))
        started = time.perf_counter()
        logs.bind_request(request_id)
        raw_path: bytes = scope["raw_path"]
        raw_query: bytes = scope["query_string"]
        token, sent = _client_token(headers, raw_query)
        shape = shape_of(sent, raw_path)
        digest = token_digest(token) if token else b""
        provider = self._provider(token, digest)
        if provider is None:
            routing = self.routing
            grants = routing.grants_of(digest) if routing is not None and token else None
            if grants is not None:  # a gateway token or a client's (`conductor.routing`)
                # the surface is the shape, but for a token sent the Anthropic way and for a
                # Gemini-way token on /v1/messages (`surface_of`)
                surface = shape if sent == "openai" else surface_of(sent, raw_path)
                if grants.client is not None:
                    await serve_client(
                        self, grants, scope, receive, send, headers, request_id, started, surface
                    )
                    return
                asked = await read_granted(
                    self, grants, scope, receive, send, headers, request_id, started, surface
                )
                if asked is not None:
                    await serve_route(self, asked, scope, send, headers, request_id, started)
                return
            await send_refusal(send, shape, Refused(401, "invalid_api_key", _NO_TOKEN), request_id)
            self.attempt_loop.metrics.unauthorized(401)
            self._unauthorized(scope, headers, raw_query, token, shape, started)
            return
        api = _surface(provider, raw_path, sent)
        path = target.checked_path(raw_path)
        query = target.checked_query(raw_query)
        if api is None or path is None or query is None:
            refused = target_refusal(api, path, query)
            await self._refuse(send, provider, api or shape, refused, request_id, scope, started)
            return
        method: str = scope["method"]
        match = provider.routes[api].match(method, path)
        if match is None:
            message = f"This provider does not serve {method} {path}; check the base URL."
            refused = Refused(404, "not_found", message)
            await self._refuse(send, provider, api, refused, request_id, scope, started)
            return
        if match.route.answer != "forward":
            await _answer_locally(send, provider, api, match, request_id)
            if self.access.enabled:
                logs.bind_provider(provider.name, OTHER_MODEL)
                self.access.done(scope, 200, 0, "local", started)
            return
        try:
            body = await read_body(
                receive,
                headers.get("content-length"),
                self.body_limits,
                self.bodies,
                arrived=scope.get(BODY_ARRIVED, False),
            )
        except ClientGone:
            log.info("client left mid-upload", extra={"request_id": request_id})
            if self.access.enabled:
                logs.bind_provider(provider.name, OTHER_MODEL)
                self.access.done(scope, 499, 0, "client_gone", started)
            return
        if isinstance(body, Refused):
            await self._refuse(send, provider, api, body, request_id, scope, started)
            return
        try:
            # the model where the provider's route says it is, and the entry serving it
            named = named_model(match, body, headers.get("content-type", ""))
            default = provider.settings.default_model
            entry = (
                named
                if isinstance(named, Refused)
                else resolve(provider.catalog, match, named.model, default)
            )
            if isinstance(entry, Refused):
                await self._refuse(send, provider, api, entry, request_id, scope, started)
                return
            assert isinstance(named, Named)
            ask = self.attempt_loop.tokens is not None or provider.metered  # usage read
            call = build_call(
                provider,
                api,
                match,
                entry,
                method,
                path,
                query,
                headers,
                body,
                named.stream,
                named.options,
                request_id,
                ask,
            )
            call.timing = Timing(started)
            await self._serve(call, scope, send, request_id)
        finally:
            self.bodies.give(len(body))

    def _provider(self, token: str | None, digest: bytes) -> Provider | None:
        if not token:
            return None
        found = self.tokens.get(digest)
        if found is None or not hmac.compare_digest(found[0].encode(), token.encode()):
            return None
        return found[1]

    async def _refuse(
        self,
        send: Send,
        provider: Provider,
        api: Surface,
        refused: Refused,
        request_id: str,
        scope: Scope,
        started: float,
    ) -> None:
        """Answer a request refused before a key was taken; counted and logged (INFO)."""
        await send_refusal(send, api, refused, request_id)
        logs.bind_provider(provider.name, OTHER_MODEL)
        self.attempt_loop.metrics.for_provider(provider.name).refused(refused.status)
        self.access.done(scope, refused.status, 0, refused.code, started)

    def _unauthorized(
        self,
        scope: Scope,
        headers: Mapping[str, str],
        query: bytes,
        token: str | None,
        shape: Surface,
        started: float,
    ) -> None:
        """Count and log (`TokenRefusals`) a request refused 401; never the token, only how it
        was sent and its length."""
        reason: Literal["missing", "wrong"] = "wrong" if token else "missing"
        refusal = Refusal(
            client=client_address(scope, self.access.trusted),
            method=scope["method"],
            path=shown_path(scope["raw_path"]),
            surface=shape,
            reason=reason,
            sent_as=_sent_as(headers, query),
            token_length=len(token or ""),
        )
        self.refusals.refused(refusal)
        if self.access.enabled:
            logs.bind_provider(NO_PROVIDER, OTHER_MODEL)
            self.access.done(scope, 401, 0, f"{reason}_token", started)

    async def _serve(self, call: Call, scope: Scope, send: Send, request_id: str) -> None:
        watch = watched(scope)
        deadline = asyncio.get_running_loop().time() + call.provider.settings.timeouts.total
        code, attempts, ended = 499, 0, "client_gone"  # until an answer is known
        try:
            code, attempts, ended = await serve_call(
                self.attempt_loop, call, send, request_id, deadline
            )
        except asyncio.CancelledError:
            if not watch.forgiven(request_id):
                raise
        finally:
            scope[ON_DISCONNECT] = None  # from here on nothing may cancel the task
            self.access.done(scope, code, attempts, ended, call.timing.started)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


_ID_PREFIX = secrets.token_hex(6)  # per process, so ids stay unique across gateway processes
_ids = itertools.count(1)


def _request_id(given: str | None) -> str:
    """The client's request id when it is short visible ASCII (it is echoed and forwarded),
    else a new one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ids):012x}"


def _client_token(headers: Mapping[str, str], query: bytes) -> tuple[str | None, Surface]:
    """The gateway token and the surface the way it came says: "gemini" (x-goog-api-key or
    ?key=), "anthropic" (x-api-key, or a Bearer token beside `anthropic-version`, as the
    Anthropic SDKs send their API key), else "openai". A Bearer token wins over x-api-key
    (a client sending both meant the Bearer one, as before x-api-key was read)."""
    google = headers.get("x-goog-api-key")
    if google:
        return google, "gemini"
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), "anthropic" if "anthropic-version" in headers else "openai"
    claude = headers.get("x-api-key")
    if claude:
        return claude, "anthropic"
    if b"key=" in query:
        found = target.query_parameter(query, b"key")
        if found is not None:
            return found, "gemini"
    return headers.get("api-key"), "openai"


def _sent_as(headers: Mapping[str, str], query: bytes) -> str:
    """How the client sent its gateway token, read in `_client_token`'s order:
    `x-goog-api-key`, `bearer`, `x-api-key`, `key-query`, `api-key`, `other-authorization` (a
    scheme other than Bearer) or `none`."""
    if headers.get("x-goog-api-key"):
        return "x-goog-api-key"
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return "bearer"
    if headers.get("x-api-key"):
        return "x-api-key"
    if b"key=" in query and target.query_parameter(query, b"key") is not None:
        return "key-query"
    if headers.get("api-key") is not None:
        return "api-key"
    return "other-authorization" if auth else "none"


def _surface(provider: Provider, path: bytes, sent: Surface) -> Surface | None:
    """The wire format of the request: Gemini native (a Gemini provider's `/v1beta/`, or `/v1/`
    with the token sent the Gemini way), Anthropic native (an Anthropic provider's
    `/v1/messages…`, or its models list asked the Anthropic way), else OpenAI under `/v1/`."""
    kind = provider.settings.provider_type
    v1 = path.startswith(b"/v1/")
    if kind == "gemini" and (path.startswith(b"/v1beta/") or (v1 and sent == "gemini")):
        return "gemini"
    if kind == "anthropic" and v1 and surface_of(sent, path) == "anthropic":
        return "anthropic"
    return "openai" if v1 else None


async def _answer_locally(
    send: Send, provider: Provider, api: Surface, match: Match, request_id: str
) -> None:
    """The models list (and, in the OpenAI format, one model) from the configuration and the
    upstream's names the Keeper last fetched: no key is taken for them."""
    names = provider.listed
    if match.route.answer == "models":
        if api == "gemini":
            models, catalog = provider.settings.models, provider.catalog
            body = gemini.models_list(
                [(name, models[catalog.resolve(name) or name].endpoint_suffix) for name in names]
            )
        elif api == "anthropic":
            body = anthropic.models_list(names)
        else:
            body = openai.models_list(names, provider.name)
        await send_whole(send, 200, JSON, body, request_id)
        return
    wanted = match.path_model or ""
    if provider.catalog.resolve(wanted) is None:
        message = f"The model {wanted[:80]!r} is not served here."
        await send_refusal(send, api, Refused(404, "model_not_found", message), request_id)
        return
    if api == "anthropic":
        body = anthropic.model_object(wanted)
    else:
        body = openai.model_object(wanted, provider.name)
    await send_whole(send, 200, JSON, body, request_id)
