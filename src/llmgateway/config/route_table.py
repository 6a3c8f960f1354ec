"""The routes and the gateway-wide tokens of a loaded config, worked out once for the request
path: each surface's view of each route, and each token's reach (`core.routes.Grants`), so
that resolving a request's model is a dict lookup (`core.routes.resolve_model`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from llmgateway.config.route_rules import SURFACE_TYPES
from llmgateway.config.route_settings import RouteSettings, any_match
from llmgateway.config.settings import Settings
from llmgateway.core.clients import ClientRules
from llmgateway.core.routes import Grants, Reach, Route, Surface, Target, tiered


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes by surface and alias (each with only the targets that surface can serve, on
    enabled providers), and the grants of each gateway-wide token by the SHA-256 digest of
    the token (`token_digest`, as the edge looks every token up: the lookup's timing says
    nothing about the token, and the table holds none)."""

    routes: Mapping[Surface, Mapping[str, Route]]
    grants: Mapping[bytes, Grants]
    served: Mapping[Surface, frozenset[str]]  # the providers each surface can serve

    def route(self, surface: Surface, alias: str) -> Route | None:
        """The route `alias` on `surface` whoever asks (a context-length fallback is the
        route's choice, not the client's), or None when that surface cannot serve it."""
        return self.routes.get(surface, {}).get(alias)

    def grants_for(
        self,
        name: str,
        routes: tuple[str, ...],
        providers: tuple[str, ...],
        client: ClientRules | None,
    ) -> Grants:
        """The grants of a token stored outside the config (`llmgateway clients`)."""
        return grants_of(name, routes, providers, client, self.routes, self.served)

    def grants_of(self, digest: bytes) -> Grants | None:
        """What the gateway-wide token with this SHA-256 `digest` may use, or None when it is
        not one."""
        return self.grants.get(digest)


def route_table(settings: Settings) -> RouteTable:
    """The route table of validated `settings`."""
    enabled = {n: p.provider_type for n, p in settings.providers.items() if p.enabled}
    served = {
        surface: frozenset(n for n, kind in enabled.items() if kind in kinds)
        for surface, kinds in SURFACE_TYPES.items()
    }
    routes = {alias: _route(alias, s) for alias, s in settings.routes.items()}
    views = {surface: _views(routes, providers) for surface, providers in served.items()}
    grants = {
        t.digest(): grants_of(t.name, t.routes, t.providers, t.rules(), views, served)
        for t in settings.gateway.tokens
    }
    return RouteTable(views, grants, served)


def token_digest(token: str) -> bytes:
    """Tokens are looked up by digest, so the lookup's timing says nothing about the token."""
    return hashlib.sha256(token.encode()).digest()


def _route(alias: str, settings: RouteSettings) -> Route:
    targets = tuple(Target(t.provider, t.model, t.weight, t.priority) for t in settings.targets)
    return Route(
        alias,
        tiered(targets),
        fallback_on=frozenset(reason.value for reason in settings.fallback_on),
        fallback_on_status=frozenset(settings.fallback_on_status),
        attempts_per_target=settings.attempts_per_target,
        max_targets=settings.max_targets,
        context_length_fallback=settings.context_length_fallback,
        stream_commit=settings.stream_commit,
        peek_timeout_sec=settings.peek_timeout_sec,
        headers=settings.headers,
    )


def _views(routes: Mapping[str, Route], providers: frozenset[str]) -> dict[str, Route]:
    views = {alias: route.only(providers) for alias, route in routes.items()}
    return {alias: view for alias, view in views.items() if view is not None}


def grants_of(
    name: str,
    routes: tuple[str, ...],
    providers: tuple[str, ...],
    client: ClientRules | None,
    views: Mapping[Surface, Mapping[str, Route]],
    served: Mapping[Surface, frozenset[str]],
) -> Grants:
    """The grants of token `name` whose `routes` and `providers` globs say what it may use."""

    def reach(surface: Surface) -> Reach:
        aliases = {a: r for a, r in views[surface].items() if any_match(routes, a)}
        allowed = frozenset(p for p in served[surface] if any_match(providers, p))
        return Reach(aliases, allowed)

    return Grants(name, reach("openai"), reach("gemini"), reach("anthropic"), client)
