"""Models no route reaches, route targets never tried, and routes the Anthropic surface serves
only in part: configured, but never (or not everywhere) served (warnings of `check-config`)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from llmgateway.config.route_rules import SURFACE_TYPES
from llmgateway.config.settings import Settings
from llmgateway.providers.catalog import is_pattern
from llmgateway.providers.target import checked_path

_GEMINI_SEGMENT = re.compile(r"[^/:]+")
"""A model in a Gemini native path (`/v1beta/models/{model}:method`): one segment, no `:`."""
_STAND_IN = "model"
"""A concrete segment in place of a pattern, to check the path a pattern's requests take."""


def unreachable_models(settings: Settings) -> list[tuple[str, str]]:
    """Every model of an enabled provider that no request can reach, as (dotted path, why):
    warnings, not errors (the model is configured, only never served). An `openai_like`
    model's `endpoint_suffix` must be a path the gateway forwards under `/v1`; a Gemini model
    must be one path segment, and its path with the suffix one the gateway forwards."""
    found: list[tuple[str, str]] = []
    for name, provider in settings.providers.items():
        if not provider.enabled:
            continue
        for model, model_settings in provider.models.items():
            where = f"providers.{name}.models.{model}"
            suffix = model_settings.endpoint_suffix
            if provider.provider_type == "gemini":
                found.extend(_gemini_reach(where, model, suffix))
            elif not suffix.startswith("/") or checked_path(("/v1" + suffix).encode()) is None:
                found.append(
                    (
                        f"{where}.endpoint_suffix",
                        f"{suffix!r} is not a path the gateway forwards (a '/…' path of "
                        "RFC 3986 characters, without dot-segments): no route reaches it",
                    )
                )
    return found


def _gemini_reach(where: str, model: str, suffix: str) -> Iterator[tuple[str, str]]:
    segment = _STAND_IN if is_pattern(model) else model.removeprefix("models/")
    native = f"/v1beta/models/{segment}"
    if _GEMINI_SEGMENT.fullmatch(segment) is None or checked_path(native.encode()) is None:
        yield (
            where,
            "a Gemini model is one path segment of RFC 3986 characters (no '/' or ':' after "
            "a leading 'models/'): no native route reaches it",
        )
    elif checked_path((native + suffix).encode()) is None:
        yield (
            f"{where}.endpoint_suffix",
            f"{suffix!r} makes a path the gateway does not forward (RFC 3986 characters only, "
            "no dot-segments): no route reaches this model",
        )


def idle_targets(settings: Settings) -> list[tuple[str, str]]:
    """Every route target on a disabled provider, as (dotted path, why): the route never tries
    it (a route none of whose targets is enabled is an error, not a warning)."""
    found: list[tuple[str, str]] = []
    for alias, route in settings.routes.items():
        for i, target in enumerate(route.targets):
            provider = settings.providers.get(target.provider)
            if provider is not None and not provider.enabled:
                found.append(
                    (
                        f"routes.{alias}.targets.{i}",
                        f"provider '{target.provider}' is disabled: the route never tries this "
                        "target",
                    )
                )
    return found


def unused_aliases(settings: Settings) -> list[tuple[str, str]]:
    """Every route alias no `gateway.tokens` entry may use (nor another route's context-length
    fallback), as (dotted path, why): only clients stored with `llmgateway clients` can."""
    fallbacks = {route.context_length_fallback for route in settings.routes.values()}
    return [
        (
            f"routes.{alias}",
            "no gateway.tokens entry may use this alias: only clients made with "
            "`llmgateway clients create --routes` can",
        )
        for alias in settings.routes
        if alias not in fallbacks
        and not any(t.may_use_route(alias) for t in settings.gateway.tokens)
    ]


def split_routes(settings: Settings) -> list[tuple[str, str]]:
    """Every route with Anthropic targets beside others, as (dotted path, why): on the
    Anthropic surface (`/v1/messages`, no request translated) only its Anthropic targets
    serve; on the OpenAI surface all of them."""
    found: list[tuple[str, str]] = []
    kinds = {n: p.provider_type for n, p in settings.providers.items() if p.enabled}
    native = SURFACE_TYPES["anthropic"]
    for alias, route in settings.routes.items():
        on = [t for t in route.targets if t.provider in kinds]
        served = [t for t in on if kinds[t.provider] in native]
        if served and len(served) < len(on):
            names = ", ".join(t.provider + "/" + t.model for t in served)
            why = f"on the Anthropic surface (/v1/messages) only {names} serve (no translation)"
            found.append((f"routes.{alias}", why))
    return found
