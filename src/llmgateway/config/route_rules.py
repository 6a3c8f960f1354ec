"""The cross-field rules of routes and gateway-wide tokens (part of `config.rules.check`).

Routes: an alias must not shadow a provider's name (nor `<provider>/…` addressing), some
gateway token must be able to use it (or another route falls back to it on context length),
its targets must name configured providers and models, each once, and some surface must be
able to serve one of them; context-length fallbacks name routes and never loop. Tokens: names
and tokens unique, tokens also distinct from every provider's; no finding ever shows a token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from llmgateway.config.route_settings import GatewayToken, RouteSettings
from llmgateway.config.settings import ProviderSettings, Settings
from llmgateway.core.routes import Surface
from llmgateway.providers.catalog import Catalog, is_pattern

Finding = tuple[str, str, str]
"""One broken rule: (dotted path, what is wrong, hint)."""

SURFACE_TYPES: Mapping[Surface, frozenset[str]] = {
    # Gemini and Anthropic through their OpenAI-compatible endpoints
    "openai": frozenset({"openai_like", "gemini", "anthropic"}),
    "gemini": frozenset({"gemini"}),  # native: no translation
    "anthropic": frozenset({"anthropic"}),  # native: no translation
}
"""The provider types each client surface can send a route's requests to."""


def route_findings(known: RouteParts) -> Iterator[Finding]:
    """Every broken rule of `routes` and `gateway.tokens`; on a config that did not validate
    the rules run on what does, and say nothing that the rest could change."""
    if known.tokens is not None:
        yield from _token_rules(known.tokens, known)
    for alias, route in known.routes.items():
        yield from _route_rules(alias, route, known)
    yield from _loop_rules(known.routes)


def routed_providers(known: RouteParts) -> frozenset[str] | None:
    """The providers gateway-wide tokens reach: those a route targets, and those a token's
    `providers` globs match; None when a route or `gateway.tokens` does not validate."""
    if known.tokens is None or known.unsure_routes:
        return None
    targeted = {t.provider for route in known.routes.values() for t in route.targets}
    named = set(known.providers) | known.unsure_providers
    addressed = {p for p in named for token in known.tokens if token.may_use_provider(p)}
    return frozenset(targeted | addressed)


@dataclass(frozen=True, slots=True)
class RouteParts:
    """What the route rules read: the parts of the config that validate; `unsure_*` name the
    ones that do not (a rule that would need them says nothing); `tokens` None when
    `gateway.tokens` does not validate. Built by `of()` or `partial()`."""

    providers: Mapping[str, ProviderSettings]
    routes: Mapping[str, RouteSettings]
    tokens: tuple[GatewayToken, ...] | None
    unsure_providers: frozenset[str] = frozenset()
    unsure_routes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> RouteParts:
        """The parts of validated settings."""
        return cls(settings.providers, settings.routes, settings.gateway.tokens)

    @classmethod
    def partial(cls, data: Mapping[str, Any]) -> RouteParts:
        """The parts of config data that did not validate as a whole which validate alone."""
        providers, unsure_providers = _each_valid(ProviderSettings, data.get("providers"))
        routes, unsure_routes = _each_valid(RouteSettings, data.get("routes"))
        gateway = data.get("gateway")
        raw = gateway.get("tokens", []) if isinstance(gateway, dict) else []
        try:
            tokens = TypeAdapter(tuple[GatewayToken, ...]).validate_python(raw or [])
        except ValidationError:
            tokens = None
        return cls(providers, routes, tokens, unsure_providers, unsure_routes)


# -- tokens ------------------------------------------------------------------------------------


def _token_rules(tokens: Sequence[GatewayToken], known: RouteParts) -> Iterator[Finding]:
    providers = known.providers
    owners = _provider_tokens(providers)
    names: dict[str, int] = {}
    for i, entry in enumerate(tokens):
        where = f"gateway.tokens.{i}"
        first = names.setdefault(entry.name, i)
        if first != i:
            yield (
                f"{where}.name",
                f"'{entry.name}' is already the name of gateway.tokens.{first}",
                "give each token its own name: logs and metrics tell clients apart by it",
            )
        if entry.token is None:
            pass  # given as token_sha256: nothing to compare
        elif not entry.token.strip():
            yield (f"{where}.token", "a blank token", "set a long random token, e.g. ${MY_TOKEN}")
        elif entry.token in owners:
            yield (
                f"{where}.token",
                f"the same token as {owners[entry.token]}",
                "a token decides what its client may use: give each its own",
            )
        if entry.token is not None:
            owners.setdefault(entry.token, f"{where}.token")
        for j, glob in enumerate(entry.providers):
            known_name = glob in providers or glob in known.unsure_providers
            if not is_pattern(glob) and not known_name:
                yield (
                    f"{where}.providers.{j}",
                    f"'{glob}' is not a configured provider",
                    _one_of(providers),
                )


def _provider_tokens(providers: Mapping[str, ProviderSettings]) -> dict[str, str]:
    """Each enabled provider's token, with the setting that holds it."""
    owners: dict[str, str] = {}
    for name, provider in providers.items():
        if provider.enabled:
            access = provider.access_control
            where = f"providers.{name}.access_control"
            if access.gateway_access_token:
                owners.setdefault(access.gateway_access_token, f"{where}.gateway_access_token")
            for i, token in enumerate(access.gateway_access_tokens):
                owners.setdefault(token, f"{where}.gateway_access_tokens.{i}")
    return owners


# -- routes ------------------------------------------------------------------------------------


def _route_rules(alias: str, route: RouteSettings, known: RouteParts) -> Iterator[Finding]:
    where, providers, routes = f"routes.{alias}", known.providers, known.routes
    yield from _alias_rules(alias, known)
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(route.targets):
        at = f"{where}.targets.{i}"
        first = seen.setdefault((target.provider, target.model), i)
        if first != i:
            yield (
                at,
                f"the same target as targets.{first} ({target.provider}, {target.model})",
                "a request tries each target at most once; to send it more traffic, raise its "
                "weight",
            )
        provider = providers.get(target.provider)
        if provider is None and target.provider not in known.unsure_providers:
            yield (f"{at}.provider", f"unknown provider '{target.provider}'", _one_of(providers))
        elif provider is not None and Catalog.of(provider.models).resolve(target.model) is None:
            yield (
                f"{at}.model",
                f"'{target.model}' is not one of provider '{target.provider}''s models",
                f"add it to providers.{target.provider}.models, or use one of: "
                + ", ".join(provider.models),
            )
    if not known.unsure_providers and not _servable(route, providers):
        yield (
            f"{where}.targets",
            "no surface can serve any target: every target's provider is unknown or disabled",
            "enable one of its providers, or remove the route",
        )
    fallback = route.context_length_fallback
    if fallback is not None and fallback not in routes and fallback not in known.unsure_routes:
        yield (
            f"{where}.context_length_fallback",
            f"'{fallback}' is not a route alias",
            _one_of(routes, "route aliases"),
        )


def _alias_rules(alias: str, known: RouteParts) -> Iterator[Finding]:
    where, providers = f"routes.{alias}", known.providers
    head, slash, _ = alias.partition("/")
    if alias in providers:
        yield (
            where,
            f"the alias '{alias}' is also a provider's name",
            "rename the route: an alias and a provider must not share a name",
        )
    elif slash and head in providers:
        yield (
            where,
            f"the alias '{alias}' hides model '{alias[len(head) + 1 :]}' of provider '{head}' "
            f"(a client naming '{alias}' would get the route)",
            "rename the route: <provider>/<model> names a provider's model",
        )
    # an alias no gateway.tokens entry may use is no error: clients stored with `llmgateway
    # clients` may use it (`config.reachable.unused_aliases` warns of it instead)


def _servable(route: RouteSettings, providers: Mapping[str, ProviderSettings]) -> bool:
    """Whether some surface can send the route's requests to one of its enabled targets."""
    types = {
        provider.provider_type
        for target in route.targets
        if (provider := providers.get(target.provider)) is not None and provider.enabled
    }
    return any(types & served for served in SURFACE_TYPES.values())


def _loop_rules(routes: Mapping[str, RouteSettings]) -> Iterator[Finding]:
    """A chain of context-length fallbacks that comes back to a route it left, once per loop
    (reported at the loop's first alias in config order)."""
    reported: set[str] = set()
    for alias in routes:
        chain = [alias]
        after = routes[alias].context_length_fallback
        while after is not None and after in routes and after not in chain:
            chain.append(after)
            after = routes[after].context_length_fallback
        if after is None or after not in chain:
            continue
        loop = chain[chain.index(after) :]
        if not reported & set(loop):
            reported.update(loop)
            yield (
                f"routes.{loop[0]}.context_length_fallback",
                "context-length fallbacks loop: " + " → ".join([*loop, after]),
                "end the chain at a route with no context_length_fallback",
            )


# -- what validates ----------------------------------------------------------------------------


def _each_valid(tp: Any, raw: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """(the entries of the mapping `raw` that validate as `tp`, the names of those that do not)."""
    if not isinstance(raw, dict):
        return {}, frozenset()
    valid: dict[str, Any] = {}
    adapter: TypeAdapter[Any] = TypeAdapter(tp)
    for name, body in raw.items():
        with contextlib.suppress(ValidationError):
            valid[str(name)] = adapter.validate_python(body)
    return valid, frozenset(str(name) for name in raw) - frozenset(valid)


def _one_of(names: Mapping[str, Any], what: str = "providers") -> str:
    return f"configured {what}: {', '.join(names)}" if names else f"no {what} are configured"
