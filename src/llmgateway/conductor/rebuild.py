"""The gateway's providers built from settings: at start, and again at a config reload, where a
provider that stays keeps what it learnt.

A reload builds every provider anew from the new settings (its routes, catalog, timeouts,
policies, tokens), but hands over from the provider it replaces the parts holding learnt state
whose settings did not change: the key pool (each key's cooldowns, ejections, counters and
in-flight count), the circuit breaker and egress limiter (`Guard`), the retry budget and the
per-key limiter. A provider removed is simply not built; one added starts empty and loads its
keys from the store at the refresh that follows.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping

from llmgateway.conductor.call import Provider
from llmgateway.config.settings import GatewayPolicy, ProviderSettings, Settings
from llmgateway.core.guard import Guard
from llmgateway.core.pool import KeyPool
from llmgateway.core.resilience import RetryBudget
from llmgateway.limits import Limits

log = logging.getLogger("llmgateway.app")


def built_providers(
    settings: Settings,
    rng: random.Random,
    limits: Limits | None,
    before: Mapping[str, Provider] | None = None,
    settings_before: Settings | None = None,
) -> dict[str, Provider]:
    """The enabled providers of `settings`; each one of `before` that stays keeps its learnt
    state where its settings allow (`settings_before`: the settings `before` was built from)."""
    built: dict[str, Provider] = {}
    selection_kept = settings_before is None or (
        settings_before.gateway.selection == settings.gateway.selection
    )
    for name, provider in settings.providers.items():
        if not provider.enabled:
            continue
        old = (before or {}).get(name)
        built[name] = _provider(name, provider, settings, rng, limits, old, selection_kept)
    return built


def _provider(
    name: str,
    provider: ProviderSettings,
    settings: Settings,
    rng: random.Random,
    limits: Limits | None,
    old: Provider | None,
    selection_kept: bool,
) -> Provider:
    policy = provider.gateway_policy
    kept = old is not None and selection_kept and _same_pool(old.settings, provider)
    if old is not None and kept:
        pool = old.pool
    else:
        pool = KeyPool(
            name,
            shared=provider.shared_key_status,
            models=provider.models,
            selection=settings.gateway.selection,
            outlier=policy.outlier_detection,
            rng=rng,
            serve_untested=policy.serve_untested_keys,
        )
    before = None if old is None else old.settings.gateway_policy
    if old is not None and before is not None and _same_guard(before, policy):
        guard = old.guard
    else:
        guard = Guard(name, policy.circuit_breaker, policy.egress_rate_limit, rng)
    if old is not None and before is not None and before.retry_budget == policy.retry_budget:
        budget = old.budget
    else:
        budget = RetryBudget(policy.retry_budget.percent, policy.retry_budget.min_concurrent)
    limiter = None
    if old is not None and before is not None and before.key_limits == policy.key_limits:
        limiter = old.limiter
    elif limits is not None:
        limiter = limits.limiter(name, policy.key_limits)
    elif policy.key_limits.enabled:
        log.warning(
            "providers.%s.gateway_policy.key_limits: per-key limits start counting only after "
            "a restart (no provider set any when this process started)",
            name,
        )
    built = Provider.build(name, provider, pool, budget, guard, limiter)
    if old is not None and pool is old.pool:  # the keys already known stay scrubbed
        built = dataclasses.replace(built, secrets=old.secrets)
    return built


def _same_pool(old: ProviderSettings, new: ProviderSettings) -> bool:
    """Whether a pool built for `old` serves `new` as it is (a pool's models, status sharing,
    outlier ejection and untested-key rule are fixed when it is made)."""
    before, after = old.gateway_policy, new.gateway_policy
    return (
        old.models == new.models
        and old.shared_key_status == new.shared_key_status
        and before.outlier_detection == after.outlier_detection
        and before.serve_untested_keys == after.serve_untested_keys
    )


def _same_guard(old: GatewayPolicy, new: GatewayPolicy) -> bool:
    """Whether a guard built for `old` (breaker, egress limiter) serves `new` as it is."""
    same_breaker = old.circuit_breaker == new.circuit_breaker
    return same_breaker and old.egress_rate_limit == new.egress_rate_limit
