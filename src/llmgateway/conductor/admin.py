"""The gateway's own routes beside the proxied ones: `/healthz` (alive), `/readyz` (pool loaded,
store reachable at the last refresh, and under `gateway.ready_requires_keys` some provider with
a usable key; details only with the metrics token, among them how the pool follows the store:
`store_updates` is `notices` or `polling`) and `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmgateway.conductor.call import Provider
from llmgateway.conductor.readiness import NO_USABLE_KEY, any_usable_key, provider_report
from llmgateway.config.settings import Settings
from llmgateway.observe.metrics import KeyCount, Metrics, pool_key_counts
from llmgateway.observe.metrics_http import metrics_endpoint, metrics_served, request_authorized
from llmgateway.observe.store_counts import StoreCounts

KEYLESS_HOLD_SEC = 1.0
"""How long `/readyz` keeps a finding of no usable key before looking at the keys again."""


@dataclass(slots=True)
class Readiness:
    """What `/readyz` reports: is the pool loaded, did the store answer the last refresh, and
    how the pool follows the store: `listening` is the store listener's (None: no listener),
    `database` what serves the store's connections (`Plan.describe()`; empty on SQLite)."""

    pool_loaded: bool = False
    store_ok: bool = False
    last_refresh: float | None = None
    revision: int = 0
    problem: str = "starting"
    listening: asyncio.Event | None = None
    database: str = ""
    keyless_until: float = 0.0  # `ready_requires_keys` found no usable key: so until then
    config_warning: str = ""  # the last config reload was refused (still ready: the old one runs)

    def store_updates(self) -> str:
        """How the pool follows the store now: `notices` (and the interval refresh behind
        them) or `polling` (the interval refresh alone)."""
        listening = self.listening
        return "notices" if listening is not None and listening.is_set() else "polling"


class Live(Protocol):
    """The settings and providers in force (the Conductor's; a config reload swaps both)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def providers(self) -> Mapping[str, Provider]: ...


def admin_routes(
    readiness: Readiness,
    live: Live,
    clock: Callable[[], float],
    metrics: Metrics,
    stored: StoreCounts | None = None,
) -> list[Route]:
    """`/healthz`, `/readyz` (from `readiness` and the providers in force, kept current by the
    Conductor), and `/metrics` unless the metrics settings the process started with turn it
    off (its key counts from the pools, and `llm_gateway_keys_total` from the store's counts
    in `stored`)."""
    settings = live.settings  # the metrics listener's settings: fixed until a restart

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def keyless() -> bool:
        # A finding of "no usable key" looked at every key (O(keys × models), ~65 ms for 100k
        # keys): it holds for a second, so a load balancer probing often does not redo it.
        now = clock()
        if now < readiness.keyless_until:
            return True
        if any_usable_key(live.providers, now):
            return False
        readiness.keyless_until = now + KEYLESS_HOLD_SEC
        return True

    async def readyz(request: Request) -> Response:
        ready = readiness.pool_loaded and readiness.store_ok
        problem = readiness.problem or None
        if ready and live.settings.gateway.ready_requires_keys and keyless():
            ready, problem = False, NO_USABLE_KEY
        status = 200 if ready else 503
        warning = {"warning": readiness.config_warning} if readiness.config_warning else {}
        if not request_authorized(request.headers.get("authorization"), settings.metrics):
            # the details (providers, key counts, revision) only with the metrics token
            return JSONResponse({"ready": ready, "problem": problem} | warning, status)
        body: dict[str, object] = {
            "ready": ready,
            "pool_loaded": readiness.pool_loaded,
            "store_reachable": readiness.store_ok,
            "revision": readiness.revision,
            "problem": problem,
            "store_updates": readiness.store_updates(),
            "refresh_interval_sec": live.settings.gateway.refresh_interval_sec,
            "database": readiness.database or "SQLite",
            **warning,
        }
        body["warnings"], body["providers"] = provider_report(live.providers, clock())
        return JSONResponse(body, status_code=status)

    async def key_counts() -> list[KeyCount]:
        now = clock()
        counts = []
        for name, provider in live.providers.items():
            metrics.for_provider(name).breaker(provider.guard.state)
            counts += pool_key_counts(name, provider.pool, provider.settings.models, now)
        return counts

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if metrics_served(settings.metrics):
        endpoint = metrics_endpoint(metrics, settings.metrics, key_counts, stored)
        routes.append(Route("/metrics", endpoint))
    return routes
