"""Which requests a provider serves: an allow-list of routes per provider type and wire format.

Only the provider's API is reachable through a pooled key. Each provider type lists the routes
it forwards (generation, embeddings, models…), a configured model's own `endpoint_suffix` is
always allowed for that model, and `gateway_policy.allowed_routes` adds more. Anything else is
answered 404 before a key is taken. Routes whose objects belong to one upstream key (stored
responses by id, files, batches, cached contents) are not on the default lists: with pooled keys
a client could never get back what another key created, or could read what another client did.

Routes are matched on the validated raw path (`target.checked_path`), the bytes forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from llmgateway.config.settings import ModelSettings, ProviderSettings

ModelSource = Literal["body", "form", "path", "optional", "none"]
"""Where a request names its model: the JSON body, a multipart form field, the path (Gemini
native), optionally the body (routes added by the operator), or nowhere (models lists)."""
Answer = Literal["forward", "models", "model"]
"""Who answers: the upstream, or the gateway itself (the models list, one model)."""
Surface = Literal["openai", "gemini", "anthropic"]

_SEGMENT = "[^/]*"  # `*` in a route: any run of characters within one path segment
_MODEL = "([^/:]+)"  # a model id in a Gemini native path


@dataclass(frozen=True, slots=True)
class Route:
    """One kind of request a provider serves."""

    name: str  # for logs and errors: `chat/completions`, `models/*:generateContent`
    model: ModelSource
    answer: Answer = "forward"
    stream: bool = False  # the route streams whatever the body says (`:streamGenerateContent`)
    builtin: bool = True  # the provider type's own: a 401/403 here may be about the key
    only: frozenset[str] | None = None  # an `endpoint_suffix` route: the model entries it serves


@dataclass(frozen=True, slots=True)
class Match:
    """A request's route, and the model its path names (Gemini native), if any."""

    route: Route
    path_model: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes of one provider on one wire format."""

    exact: Mapping[tuple[str, str], Route] = field(default_factory=dict)  # (method, path)
    patterns: tuple[tuple[str | None, re.Pattern[str], Route], ...] = ()  # None: any method
    # the exact routes' matches, made once: nearly every request takes one
    _exact_matches: Mapping[tuple[str, str], Match] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        matches = {key: Match(route) for key, route in self.exact.items()}
        object.__setattr__(self, "_exact_matches", matches)

    def match(self, method: str, path: str) -> Match | None:
        """The route `method path` takes, or None when the provider does not serve it."""
        exact = self._exact_matches.get((method, path))
        if exact is not None:
            return exact
        for wanted, pattern, route in self.patterns:
            if wanted is not None and wanted != method:
                continue
            found = pattern.fullmatch(path)
            if found is not None:
                return Match(route, found.group(1) if pattern.groups else None)
        return None


_OPENAI_ROUTES: dict[str, ModelSource] = {
    "chat/completions": "body",
    "completions": "body",
    "embeddings": "body",
    "responses": "body",
    "moderations": "body",
    "audio/speech": "body",
    "audio/transcriptions": "form",
    "audio/translations": "form",
    "images/generations": "body",
    "images/edits": "form",
    "images/variations": "form",
}
# Gemini's OpenAI-compatible endpoint (`/v1beta/openai/…`) serves fewer of them
_GEMINI_OPENAI_ROUTES = ("chat/completions", "embeddings", "images/generations")
# Anthropic's OpenAI-compatible endpoint serves chat completions only
_ANTHROPIC_OPENAI_ROUTES = ("chat/completions",)
_ANTHROPIC_ROUTES = ("messages", "messages/count_tokens")
_GEMINI_METHODS = {
    "generateContent": False,
    "streamGenerateContent": True,
    "countTokens": False,
    "embedContent": False,
    "batchEmbedContents": False,
}


def openai_surface(
    provider_type: str, models: Mapping[str, ModelSettings], extra: Iterable[str] = ()
) -> RouteTable:
    """The routes under `/v1/` in the OpenAI format (for a Gemini or Anthropic provider: its
    OpenAI-compatible endpoint)."""
    native = provider_type in ("gemini", "anthropic")
    names = {"gemini": _GEMINI_OPENAI_ROUTES, "anthropic": _ANTHROPIC_OPENAI_ROUTES}.get(
        provider_type, tuple(_OPENAI_ROUTES)
    )
    exact: dict[tuple[str, str], Route] = {
        ("POST", f"/v1/{name}"): Route(name, _OPENAI_ROUTES[name]) for name in names
    }
    exact[("GET", "/v1/models")] = Route("models", "none", answer="models")
    patterns: list[tuple[str | None, re.Pattern[str], Route]] = [
        ("GET", re.compile(r"/v1/models/(.+)"), Route("models/*", "none", answer="model"))
    ]
    if not native:  # a suffix is a path under api_base_url; the others' are native routes
        _suffix_routes(exact, models)
    patterns += _operator_routes(extra, "/v1/")
    return RouteTable(exact, tuple(patterns))


def anthropic_surface(models: Mapping[str, ModelSettings], extra: Iterable[str] = ()) -> RouteTable:
    """Anthropic's native routes under `/v1/`: the Messages API and the models list."""
    exact: dict[tuple[str, str], Route] = {
        ("POST", f"/v1/{name}"): Route(name, "body") for name in _ANTHROPIC_ROUTES
    }
    exact[("GET", "/v1/models")] = Route("models", "none", answer="models")
    patterns: list[tuple[str | None, re.Pattern[str], Route]] = [
        ("GET", re.compile(r"/v1/models/(.+)"), Route("models/*", "none", answer="model"))
    ]
    _suffix_routes(exact, models)
    patterns += _operator_routes(extra, "/v1/")
    return RouteTable(exact, tuple(patterns))


def _suffix_routes(
    exact: dict[tuple[str, str], Route], models: Mapping[str, ModelSettings]
) -> None:
    """Each configured `endpoint_suffix` (a path under `api_base_url`) not yet routed, for the
    model entries naming it."""
    for suffix, entries in _by_suffix(models).items():
        key = ("POST", "/v1" + suffix)
        if key not in exact:
            exact[key] = Route(suffix.lstrip("/"), "body", only=entries)


def gemini_surface(models: Mapping[str, ModelSettings], extra: Iterable[str] = ()) -> RouteTable:
    """The Gemini native routes, under `/v1beta/` and `/v1/` alike."""
    exact: dict[tuple[str, str], Route] = {}
    patterns: list[tuple[str | None, re.Pattern[str], Route]] = []
    for version in ("/v1beta", "/v1"):
        exact[("GET", f"{version}/models")] = Route("models", "none", answer="models")
        for method, stream in _GEMINI_METHODS.items():
            route = Route(f"models/*:{method}", "path", stream=stream)
            pattern = re.compile(rf"{version}/models/{_MODEL}:{method}")
            patterns.append(("POST", pattern, route))
        for suffix, entries in _by_suffix(models).items():
            if suffix.startswith(":") and suffix[1:] not in _GEMINI_METHODS:
                route = Route(f"models/*{suffix}", "path", only=entries)
                pattern = re.compile(f"{version}/models/{_MODEL}{re.escape(suffix)}")
                patterns.append(("POST", pattern, route))
        get_model = Route("models/*", "path")
        patterns.append(("GET", re.compile(rf"{version}/models/{_MODEL}"), get_model))
    patterns += _operator_routes(extra, "/v1beta/")
    patterns += _operator_routes(extra, "/v1/")
    return RouteTable(exact, tuple(patterns))


MESSAGES = b"/v1/messages"
"""Anthropic's Messages API paths start so (`/v1/messages`, `/v1/messages/count_tokens`)."""


def shape_of(sent: Surface, path: bytes) -> Surface:
    """The API shape of an answer made before the provider is known: the one the token's way
    says (x-goog-api-key: Gemini, x-api-key: Anthropic), else a `/v1beta/` path's (Gemini) or
    a `/v1/messages` one's (Anthropic), else OpenAI's."""
    if sent != "openai":
        return sent
    if path.startswith(b"/v1beta/"):
        return "gemini"
    return "anthropic" if path.startswith(MESSAGES) else "openai"


def surface_of(sent: Surface, path: bytes) -> Surface:
    """The wire format of a request: Anthropic's for `/v1/messages…`, and for the models list
    when the token came the Anthropic way (its other `/v1/` paths are OpenAI's: Anthropic's
    OpenAI-compatible endpoint); Gemini's for `/v1beta/` or a token sent the Gemini way;
    else OpenAI's."""
    if path.startswith(MESSAGES):
        return "anthropic"
    if sent == "anthropic":
        return "anthropic" if path.startswith(_MODELS) else "openai"
    return shape_of(sent, path)


_MODELS = b"/v1/models"


def tables(provider: ProviderSettings) -> dict[Surface, RouteTable]:
    """The route tables of a provider, by the wire format the client speaks."""
    extra = provider.gateway_policy.allowed_routes
    openai = openai_surface(provider.provider_type, provider.models, extra)
    if provider.provider_type == "gemini":
        return {"openai": openai, "gemini": gemini_surface(provider.models, extra)}
    if provider.provider_type == "anthropic":
        return {"openai": openai, "anthropic": anthropic_surface(provider.models, extra)}
    return {"openai": openai}


def _by_suffix(models: Mapping[str, ModelSettings]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for name, model in models.items():
        found.setdefault(model.endpoint_suffix, set()).add(name)
    return {suffix: frozenset(names) for suffix, names in found.items()}


def _operator_routes(
    entries: Iterable[str], prefix: str
) -> list[tuple[str | None, re.Pattern[str], Route]]:
    """`gateway_policy.allowed_routes` entries (`[METHOD ]/path`, `*` within one segment)
    under `prefix`; their model, when the body names one, must be a configured one."""
    found: list[tuple[str | None, re.Pattern[str], Route]] = []
    for entry in entries:
        method, path = parse_operator_route(entry)
        if not path.startswith(prefix):
            continue
        pattern = "".join(_SEGMENT if c == "*" else re.escape(c) for c in path)
        # no group: `match` takes group(1) only from the Gemini model patterns
        route = Route(path.removeprefix("/"), "optional", builtin=False)
        found.append((method, re.compile(pattern), route))
    return found


def parse_operator_route(entry: str) -> tuple[str | None, str]:
    """`"POST /v1/files"` → `("POST", "/v1/files")`; `"/v1/files"` → `(None, "/v1/files")`."""
    method, _, path = entry.strip().rpartition(" ")
    return (method.strip().upper() or None), path
