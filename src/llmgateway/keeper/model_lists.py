"""The upstream's model names, fetched by the Keeper for the models lists the gateway answers.

A provider with a pattern under `models` (`gpt-4.1*`) serves names the config does not spell
out; its models lists show them as the upstream last listed them. The Keeper `GET`s the
provider's models list (the URL of the auth probe) with one of its keys, through the probes'
seam (`prober.fetch`), and keeps what is safe to show: names of at most 256 characters of
`[A-Za-z0-9._:/@+-]`, each once, at most `MAX_NAMES` of them, read from at most `MAX_PAGES`
pages (Gemini pages its list) of at most `BODY_LIMIT` bytes each. An upstream is trusted for
nothing here either: anything else in its answer is dropped, and an answer that is not a
models list fails the fetch (the previous list is kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson

from llmgateway.config.settings import ProviderSettings
from llmgateway.keeper.prober import describe_exception, fetch
from llmgateway.providers import ProbeRequest, auth_probe_request
from llmgateway.store.model_lists import MAX_NAMES
from llmgateway.transport.upstream import Upstream

BODY_LIMIT = 4 * 1024 * 1024
"""The most bytes read of one answer (a page); a longer one fails the fetch."""
MAX_PAGES = 20
"""The most pages of a paged list (Gemini) followed; the names of those are kept."""
GEMINI_PAGE_SIZE = 1000
"""Models asked for per page of Gemini's list (its maximum)."""
MAX_PAGE_TOKEN = 1024
"""A longer `nextPageToken` is not followed."""
SAFE_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
"""A model name shown in a models list."""


class FetchError(Exception):
    """The models list could not be fetched; the message says why (never the key)."""


async def fetch_names(
    upstream: Upstream, provider: ProviderSettings, secret: str, egress: str
) -> list[str]:
    """The model names the provider's upstream lists for key `secret`, sent via `egress`.
    Gemini's names lose their `models/` prefix (the gateway's catalog and paths use them
    without). Raises FetchError."""
    request = auth_probe_request(provider, secret)
    if provider.provider_type != "gemini":
        return kept(openai_names(await _get(upstream, provider, request, egress)))
    names: list[str] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        url = f"{request.url}?pageSize={GEMINI_PAGE_SIZE}"
        if token is not None:
            url += f"&pageToken={quote(token, safe='')}"
        page, token = gemini_page(await _get(upstream, provider, replace(request, url=url), egress))
        names = kept([*names, *page])
        if token is None or len(names) >= MAX_NAMES:
            break
    return names


async def _get(
    upstream: Upstream, provider: ProviderSettings, request: ProbeRequest, egress: str
) -> bytes:
    try:
        status, body = await fetch(upstream, provider, request, egress, BODY_LIMIT)
    except Exception as error:  # any failure to get an answer; cancellation is not an Exception
        raise FetchError(describe_exception(error)) from error
    if not 200 <= status <= 299:
        raise FetchError(f"HTTP {status}")
    return body


def openai_names(body: bytes) -> list[str]:
    """The ids in OpenAI's list shape, `{"data": [{"id": …}, …]}` (other items skipped)."""
    data = _document(body).get("data")
    if not isinstance(data, list):
        raise FetchError("the answer is not a models list (no `data` list)")
    return [
        item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]


def gemini_page(body: bytes) -> tuple[list[str], str | None]:
    """One page of Gemini's list, `{"models": [{"name": "models/…"}, …], "nextPageToken"}`:
    its names without `models/`, and the next page's token (None: the last page)."""
    document = _document(body)
    models = document.get("models", [])
    if not isinstance(models, list):
        raise FetchError("the answer is not a models list (`models` is not a list)")
    names = [
        item["name"].removeprefix("models/")
        for item in models
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]
    token = document.get("nextPageToken")
    if not isinstance(token, str) or not token or len(token) > MAX_PAGE_TOKEN:
        token = None
    return names, token


def kept(names: Iterable[str]) -> list[str]:
    """The safe names, each once, in the upstream's order, at most `MAX_NAMES`."""
    seen: dict[str, None] = {}
    for name in names:
        if name not in seen and SAFE_NAME.fullmatch(name) is not None:
            seen[name] = None
            if len(seen) >= MAX_NAMES:
                break
    return list(seen)


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FetchError("the answer is not JSON") from None
    if not isinstance(document, dict):
        raise FetchError("the answer is not a JSON object")
    return document
