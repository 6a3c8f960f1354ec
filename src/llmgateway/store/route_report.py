"""The routes part of `llmgateway status` and of the console's overview: each route's targets
and whether they are eligible now, as the store has it (every gateway's pool follows the store;
a gateway's own cooldowns and ejections may make a target ineligible a little sooner)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmgateway.config.settings import Settings
from llmgateway.core.key_states import shown_state, usable_states
from llmgateway.core.resilience import BreakerState
from llmgateway.providers.catalog import Catalog
from llmgateway.records import StatusCount
from llmgateway.store.breakers import BreakerRow
from llmgateway.store.status import SHARED_MODEL_LABEL

BREAKER_NAMES = {int(state): state.name.lower().replace("_", "-") for state in BreakerState}


@dataclass(frozen=True, slots=True)
class TargetView:
    """One target of a route: `usable` keys may serve it (healthy, or untested where the
    provider serves untested keys), its provider's `breaker` as last reported (`-`: never),
    and whether the plan would try it now (`why` not, when it would not)."""

    route: str
    target: str
    priority: int
    weight: float
    usable: int
    breaker: str
    eligible: bool
    why: str


def route_targets(
    settings: Settings, counts: Sequence[StatusCount], breakers: Sequence[BreakerRow]
) -> list[TargetView]:
    """Every configured route's targets, in config order."""
    usable: dict[tuple[str, str], int] = {}
    for count in counts:
        provider = settings.providers.get(count.provider)
        if provider is None:
            continue
        serving = usable_states(provider.gateway_policy.serve_untested_keys)
        if shown_state(count.status) in serving:
            key = (count.provider, count.model)
            usable[key] = usable.get(key, 0) + count.count
    states = {row.provider: row.state for row in breakers}
    found = []
    for alias, route in settings.routes.items():
        for target in route.targets:
            provider = settings.providers.get(target.provider)
            model = target.model
            if provider is not None and provider.shared_key_status:
                model = SHARED_MODEL_LABEL
            elif provider is not None:
                model = Catalog.of(provider.models).resolve(target.model) or target.model
            keys = usable.get((target.provider, model), 0)
            state = states.get(target.provider)
            why = _why_not(provider is not None and provider.enabled, keys, state)
            found.append(
                TargetView(
                    route=alias,
                    target=f"{target.provider}/{target.model}",
                    priority=target.priority,
                    weight=target.weight,
                    usable=keys,
                    breaker="-" if state is None else BREAKER_NAMES.get(state, str(state)),
                    eligible=not why,
                    why=why,
                )
            )
    return found


def _why_not(enabled: bool, usable: int, breaker: int | None) -> str:
    if not enabled:
        return "provider disabled"
    if breaker == BreakerState.OPEN:
        return "breaker open"
    if not usable:
        return "no usable key"
    return ""
