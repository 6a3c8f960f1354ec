"""What `/readyz` says about each provider: its keys by state, its breaker, what is wrong."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from llmgateway.conductor.call import Provider
from llmgateway.core.key_states import usable_states
from llmgateway.core.resilience import BreakerState
from llmgateway.observe.metrics import model_label


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
