"""What a gateway process's gateway tokens and clients need, built once per edge (`Routing`):
the route table, the providers by name, the plans' random source, the stored clients, and the
cached answers to "which provider and model entry serves this target" and "may this target
take a request now" (O(1): the pool's bag and the provider's breaker, no key looked at).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmgateway.conductor.admission import Refused, resolve
from llmgateway.conductor.call import Provider
from llmgateway.conductor.client_gate import Clients
from llmgateway.config.route_table import RouteTable
from llmgateway.core.route_plan import NO_HEALTHY_KEY, Failure
from llmgateway.core.routes import Grants, Route, StreamCommit, Surface, Target
from llmgateway.observe.throttle import Throttle
from llmgateway.providers.routes import Match

log = logging.getLogger("llmgateway.api")

NOT_SERVED = Refused(
    404,
    "not_found",
    "A gateway token serves POST /v1/… with the model in the body (POST /v1/messages on "
    "the Anthropic surface), and POST /v1beta/models/{model}:{method} (or /v1/) on the "
    "Gemini surface.",
)
"""A gateway token's request on a path or method no route serves."""

_MOST_REMEMBERED = 4096
"""Entries a `Routing` cache holds before it starts again (names from clients are unbounded)."""


@dataclass(frozen=True, slots=True)
class Routing:
    """What gateway tokens need, built once per gateway process: the route table, the
    providers by name, the random source of the plans, the clock of the pools and the stored
    clients (`llmgateway clients`)."""

    table: RouteTable
    providers: Mapping[str, Provider]
    rng: random.Random
    clock: Callable[[], float] = time.time
    clients: Clients = field(default_factory=Clients)
    warned: dict[str, Throttle] = field(default_factory=dict)
    # (provider, model) → the provider and the model entry serving it (None: none does)
    _served: dict[tuple[str, str], tuple[Provider, str] | None] = field(default_factory=dict)
    ways: dict[tuple[str, str, str, str], Way | Refused] = field(default_factory=dict)
    """(target label, surface, method, path) → how the target takes such requests (`way`
    fills it)."""
    # (provider, model) → the one-target route of `<provider>/<model>` (None: not served)
    _direct: dict[tuple[str, str], Route | None] = field(default_factory=dict)

    def grants_of(self, digest: bytes) -> Grants | None:
        """What the gateway token or stored client with this SHA-256 `digest` may use."""
        found = self.table.grants.get(digest)
        return found if found is not None else self.clients.by_digest.get(digest)

    def eligible(self, provider: str, model: str) -> bool:
        """Whether target (`provider`, `model`) has a key it may use now, behind a breaker
        that lets calls through; O(1), no key looked at."""
        served = self.served(provider, model)
        if served is None:
            return False
        found, entry = served
        now = self.clock()
        return found.guard.open_to_calls(now) and found.pool.ready(entry, now)

    def served(self, provider: str, model: str) -> tuple[Provider, str] | None:
        """The provider and its model entry (name or pattern) serving `model` (None: none)."""
        key = (provider, model)
        try:
            return self._served[key]
        except KeyError:
            pass
        found = self.providers.get(provider)
        entry = found.catalog.resolve(model) if found is not None else None
        served = None if found is None or entry is None else (found, entry)
        if len(self._served) >= _MOST_REMEMBERED:  # `<provider>/<model>` names are the client's
            self._served.clear()
        self._served[key] = served
        return served

    def direct(self, provider: str, model: str) -> Route | None:
        """The one-target route of a request naming `<provider>/<model>` (None: the provider
        serves no such model): no fallback, nothing held back, no `x-llmgateway-*` headers,
        not counted as a route."""
        key = (provider, model)
        try:
            return self._direct[key]
        except KeyError:
            pass
        route = None
        if self.served(provider, model) is not None:
            only = (Target(provider, model),)
            route = Route(
                f"{provider}/{model}",
                (only,),
                frozenset(),
                max_targets=1,
                stream_commit=StreamCommit.FIRST_BYTE,
                headers=False,
            )
        if len(self._direct) >= _MOST_REMEMBERED:  # the names are the client's
            self._direct.clear()
        self._direct[key] = route
        return route

    def way(self, target: Target, surface: Surface, method: str, path: str) -> Way | Refused:
        """How `target` takes a request of this surface, method and path (the model segment of
        a Gemini native path is the target's), worked out once per kind of request and kept in
        `ways` (the request path looks there first)."""
        key = (target.label, surface, method, path)
        found = self.ways.get(key)
        if found is None:
            found = _way(self.providers[target.provider], target, surface, method, path)
            if len(self.ways) >= _MOST_REMEMBERED:  # the paths are the client's
                self.ways.clear()
            self.ways[key] = found
        return found

    def skipped(self, target: Target) -> Failure:
        """Why an ineligible target was left out of a plan (for the answer of a request whose
        every target failed): rate-limited until its first key's cooldown ends, or no key."""
        served = self.served(target.provider, target.model)
        if served is None:
            return Failure(target, NO_HEALTHY_KEY, called=False)
        found, entry = served
        now = self.clock()
        if not found.guard.open_to_calls(now):
            return Failure(target, NO_HEALTHY_KEY, called=False)
        why = found.pool.why_not(entry, now)
        reason = "rate_limited" if why.reason == "rate_limited" else NO_HEALTHY_KEY
        return Failure(target, reason, retry_after=why.retry_after, called=False)

    def config_warning(self, route: Route, target: Target) -> None:
        """Log (throttled, per target) that a target's upstream says its model does not
        exist: the route's config names a model the provider no longer serves."""
        throttle = self.warned.setdefault(target.label, Throttle(60.0))
        if throttle.offer(time.monotonic()) is not None:
            log.warning(
                "route %s: the upstream of target %s says model %s does not exist; fix the "
                "route's config (requests fall back meanwhile)",
                route.alias,
                target.label,
                target.model,
            )


@dataclass(frozen=True, slots=True)
class Way:
    """How a route's target takes one kind of request: its provider, the path it is sent to
    there, the provider's route for it and the model entry serving it."""

    provider: Provider
    path: str
    match: Match
    entry: str


def _way(
    provider: Provider, target: Target, surface: Surface, method: str, path: str
) -> Way | Refused:
    table = provider.routes.get(surface)
    if table is None:
        return NOT_SERVED
    if surface == "gemini":  # /v1beta/models/{alias}:{verb} → /v1beta/models/{model}:{verb}
        prefix, _, rest = path.partition("/models/")
        path = f"{prefix}/models/{target.model}:{rest.rpartition(':')[2]}"
    match = table.match(method, path)
    if match is None:
        return NOT_SERVED
    entry = resolve(provider.catalog, match, target.model, provider.settings.default_model)
    if isinstance(entry, Refused):
        return entry
    return Way(provider, path, match, entry)
