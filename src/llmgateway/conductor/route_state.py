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

from llmgateway.conductor.call import Provider
from llmgateway.conductor.client_gate import Clients
from llmgateway.config.route_table import RouteTable
from llmgateway.core.route_plan import NO_HEALTHY_KEY, Failure
from llmgateway.core.routes import Grants, Route, Target
from llmgateway.observe.throttle import Throttle

log = logging.getLogger("llmgateway.api")

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
    # (alias, target label) → the x-llmgateway-* values, encoded
    _shown: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)

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

    def shown(self, alias: str, label: str) -> tuple[bytes, bytes]:
        """The route and target header values (ASCII; anything else replaced)."""
        key = (alias, label)
        found = self._shown.get(key)
        if found is None:
            if len(self._shown) >= _MOST_REMEMBERED:
                self._shown.clear()
            found = self._shown[key] = (
                alias.encode("ascii", "replace"),
                label.encode("ascii", "replace"),
            )
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
