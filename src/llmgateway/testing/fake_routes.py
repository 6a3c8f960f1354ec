"""The fake upstream's provider routes: the paths it serves, the dialect each speaks (how it
takes its key and words its errors) and the answer each gives: OpenAI (chat, the Responses
API, embeddings, models), Anthropic's Messages API, Gemini native and Gemini's
OpenAI-compatible endpoint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from llmgateway.testing import fake_answers as answers
from llmgateway.testing import fake_anthropic
from llmgateway.testing.fake_answers import Answer
from llmgateway.testing.faults import Dialect

Handler = Callable[[web.Request, bytes], Answer | web.Response]
"""An answer to a call the fake lets through (its body read)."""
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]
Wrap = Callable[[Dialect, Handler], Endpoint]
"""The fake's route wrapper: key, counters and faults around a handler."""


class Served(Protocol):
    """What the answers read of the fake (`FakeUpstream` is one), at each call."""

    @property
    def chunks(self) -> int: ...
    @property
    def models(self) -> tuple[str, ...]: ...


def provider_routes(fake: Served, route: Wrap) -> list[web.RouteDef]:
    """Every provider path of the fake, each wrapped by `route` in its dialect."""

    def chat(request: web.Request, body: bytes) -> Answer | web.Response:
        return answers.chat(request, body, fake.chunks)

    def responses(request: web.Request, body: bytes) -> Answer | web.Response:
        return answers.responses(request, body, fake.chunks)

    def messages(request: web.Request, body: bytes) -> Answer | web.Response:
        return fake_anthropic.messages(request, body, fake.chunks)

    def openai_models(request: web.Request, body: bytes) -> Answer:
        return answers.openai_models(fake.models)

    def gemini_models(request: web.Request, body: bytes) -> Answer | web.Response:
        return answers.gemini_models(request, fake.models)

    def gemini_model(request: web.Request, body: bytes) -> Answer:
        return answers.gemini_model(request)

    def gemini_call(request: web.Request, body: bytes) -> Answer | web.Response:
        return answers.gemini_call(request, body, fake.chunks)

    def anthropic_models(request: web.Request, body: bytes) -> Answer | web.Response:
        return fake_anthropic.models(request, fake.models)

    v1_models = _v1_models(
        route("openai", openai_models),
        route("gemini", gemini_models),
        route("anthropic", anthropic_models),
    )
    return [
        web.post("/v1/chat/completions", route("openai", chat)),
        web.post("/v1/responses", route("openai", responses)),
        web.post("/v1/embeddings", route("openai", answers.embeddings)),
        web.post("/v1/messages", route("anthropic", messages)),
        web.post("/v1/messages/count_tokens", route("anthropic", fake_anthropic.count_tokens)),
        web.get("/v1/models", v1_models),
        web.post("/v1beta/openai/chat/completions", route("compat", chat)),
        web.post("/v1beta/openai/embeddings", route("compat", answers.embeddings)),
        web.get("/v1beta/openai/models", route("compat", openai_models)),
        web.get("/v1beta/models", route("gemini", gemini_models)),
        web.get("/v1beta/models/{target}", route("gemini", gemini_model)),
        web.get("/v1/models/{target}", route("gemini", gemini_model)),
        web.post("/v1beta/models/{target}", route("gemini", gemini_call)),
        web.post("/v1/models/{target}", route("gemini", gemini_call)),
    ]


def _v1_models(openai: Endpoint, gemini: Endpoint, anthropic: Endpoint) -> Endpoint:
    # `GET /v1/models` is OpenAI's list, Gemini's (v1) for a caller using x-goog-api-key,
    # or Anthropic's for one using x-api-key.
    async def handle(request: web.Request) -> web.StreamResponse:
        if "x-goog-api-key" in request.headers:
            return await gemini(request)
        return await (anthropic if "x-api-key" in request.headers else openai)(request)

    return handle
