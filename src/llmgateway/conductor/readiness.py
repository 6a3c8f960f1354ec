"""What `/readyz` says about each provider: its keys by state, its breaker, what is wrong; and,
under `gateway.ready_requires_keys`, whether any provider has a key to serve with at all."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from llmgateway.conductor.call import Provider
from llmgateway.core.key_states import KeyState, usable_states
from llmgateway.core.resilience import BreakerState
from llmgateway.observe.metrics import model_label

WAITING_OR_SERVING: frozenset[KeyState] = frozenset({"healthy", "untested", "cooling", "ejected"})
"""States of a key that serves, or will serve again without anyone acting: a 429's cooldown
and an outlier ejection end by themselves, an untested key is served or probed. The others
(`invalid`, `no_quota`, `no_model`) wait for a probe's finding hours away or for new keys."""
NO_USABLE_KEY = "no provider has a usable key (gateway.ready_requires_keys)"
"""The `/readyz` problem when `ready_requires_keys` finds no usable key (no provider names:
the details, which need the metrics token, list them in `warnings`)."""


def any_usable_key(providers: Mapping[str, Provider], now: float) -> bool:
    """Whether some provider has a key in a `WAITING_OR_SERVING` state for one of its models;
    stops at the first one found (a provider without keys, e.g. no keys folder, has none)."""
    for provider in providers.values():
        for key_id in provider.pool.key_ids():
            for model in provider.settings.models:
                if provider.pool.state(key_id, model, now) in WAITING_OR_SERVING:
                    return True
    return False


def provider_report(
    providers: Mapping[str, Provider], now: float
) -> tuple[list[str], dict[str, Any]]:
    """Warnings (a model with no usable key, an open breaker) and a summary per provider."""
    warnings: list[str] = []
    summary: dict[str, Any] = {}
    for name, provider in providers.items():
        by_scope: dict[str, Counter[str]] = {}
        for (scope, state), count in provider.pool.counts(now).items():
            by_scope.setdefault(model_label(scope), Counter())[state] += count
        breaker = provider.guard.state
        summary[name] = {
            "keys": provider.pool.size,
            "breaker": breaker.name.lower(),
            "models": {model: dict(states) for model, states in sorted(by_scope.items())},
        }
        if provider.pool.size == 0:
            folder = provider.settings.keys_path
            warnings.append(f"provider {name}: no keys; put key files in {folder}")
            continue
        serve_untested = provider.settings.gateway_policy.serve_untested_keys
        usable = usable_states(serve_untested)
        for model, states in sorted(by_scope.items()):
            if not any(states[s] for s in usable):
                found = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                if states["untested"] and not serve_untested:
                    found += "; untested keys wait for their first probe: serve_untested_keys"
                    found += " is false"
                warnings.append(f"provider {name} model {model}: no usable key ({found})")
        if breaker is not BreakerState.CLOSED:
            warnings.append(f"provider {name}: circuit breaker {breaker.name.lower()}")
    return warnings, summary
