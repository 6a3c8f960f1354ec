"""The fake upstream's answers on Anthropic's Messages API: `POST /v1/messages` (whole, or
streamed as Anthropic streams), `POST /v1/messages/count_tokens` and `GET /v1/models` (paged by
`?limit=` and `?after_id=`, as Anthropic pages it)."""

from __future__ import annotations

from aiohttp import web

from llmgateway.testing import anthropic_wire as claude
from llmgateway.testing.fake_answers import Answer, json_object

DEFAULT_PAGE = 20
"""Models per page when the caller asks for no `limit` (as Anthropic)."""
MAX_PAGE = 1000


def messages(request: web.Request, body: bytes, chunks: int) -> Answer | web.Response:
    """A message, or its events when the body says `"stream": true`."""
    document = json_object(body)
    if document is None:
        return claude.error(400, "There was an issue with the format of your request.")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        return claude.error(400, "model: Field required")
    if not isinstance(document.get("max_tokens"), int):
        return claude.error(400, "max_tokens: Field required")
    if document.get("stream") is not True:
        return Answer(body=claude.message(model, chunks))
    events = claude.message_events(model, chunks)
    return Answer(events=events, content_type="text/event-stream", streamed=True)


def count_tokens(request: web.Request, body: bytes) -> Answer | web.Response:
    """The request's input tokens."""
    document = json_object(body)
    if document is None or not isinstance(document.get("model"), str):
        return claude.error(400, "model: Field required")
    return Answer(body=claude.token_count(body))


def models(request: web.Request, names: tuple[str, ...]) -> Answer | web.Response:
    """One page of the models list."""
    limit = request.query.get("limit", str(DEFAULT_PAGE))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        return claude.error(400, f"limit: Input should be between 1 and {MAX_PAGE}")
    return Answer(body=claude.models_page(names, int(limit), request.query.get("after_id")))
