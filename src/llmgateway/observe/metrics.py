"""Prometheus metrics: every family the README's Metrics section lists, prefix `llmgateway_`.

No label ever carries a key, a key id or a token; `model` is bounded to the configured models
(anything else is `other`). Histograms use LLM-sized buckets up to 600 s.

One `Metrics` per process holds the families on its own registry. With several gateway worker
processes (`gateway --workers N`), `PROMETHEUS_MULTIPROC_DIR` is set before the workers start:
prometheus-client then keeps every process's values in files there, and a scrape, whichever
process answers it, adds them up (`multiprocess_mode` says how for each gauge). The key counts
(`llmgateway_keys`, `llmgateway_key_states`, and the original llmGateway's
`llm_gateway_keys_total`) are added by the process answering: from its pool (a gateway's own
families) or from the store's counts it last read (`observe.store_counts`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmgateway.core.key_states import shown_state
from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.core.pool import KeyPool
from llmgateway.observe.provider_metrics import OTHER_MODEL, ProviderMetrics, Tally
from llmgateway.observe.route_metrics import RouteMetrics
from llmgateway.records import StatusCount, SyncChanges

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
"""Seconds: a whole LLM call or its first byte (prometheus-client's default stops at 10 s)."""
OVERHEAD_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    *(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 600),
)
"""Seconds of the gateway's own time: sub-millisecond normally, longer with retry backoff."""
PROBE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
FLUSH_SEC = 1.0
"""How often each of several worker processes hands its request tallies to the shared files."""
SHARED_MODEL = "shared"
NO_PROVIDER = "none"
LEGACY_KEYS = "llm_gateway_keys_total"
"""The original llmGateway's one gauge: the store's keys by provider, model and status.
Deprecated: exported for existing dashboards until 0.3.0 (as `llmgateway_keys`)."""


class ProviderSynced(Protocol):
    """What one provider's file sync changed (`keyfiles.ProviderSync` is one)."""

    @property
    def provider(self) -> str: ...
    @property
    def keys(self) -> SyncChanges | None: ...
    @property
    def proxies(self) -> SyncChanges | None: ...


class Synced(Protocol):
    """What one file sync of every provider changed (`keyfiles.SyncReport` is one)."""

    @property
    def providers(self) -> Sequence[ProviderSynced]: ...


@dataclass(frozen=True, slots=True)
class KeyCount:
    """Keys of a provider and model in one status (the view's own word: a pool state for a
    gateway, a stored status for the Keeper) and the state it stands for."""

    provider: str
    model: str
    status: str
    count: int
    state: str  # a KeyState, or `disabled` in the Keeper's view (`llmgateway keys disable`)


def model_label(model: str) -> str:
    """The `model` label of a status scope (`shared` under shared_key_status)."""
    return SHARED_MODEL if model == ALL_MODELS else model


@dataclass(slots=True)
class Metrics:
    """Every metric family of one process, on its own registry (see the module docstring)."""

    registry: CollectorRegistry
    multiprocess: bool
    requests: Counter
    request_duration: Histogram
    time_to_first_byte: Histogram
    overhead: Histogram
    upstream_attempts: Counter
    retries: Counter
    inflight: Gauge
    key_cooldowns: Counter
    circuit_breaker_state: Gauge
    probes: Counter
    probe_duration: Histogram
    sync_changes: Counter
    limiter_unavailable: Counter
    event_loop_tasks: Gauge
    auth_failures: Counter
    routes: RouteMetrics
    config_reloads: Counter
    tokens: Counter
    usage_missing: Counter
    _providers: dict[str, ProviderMetrics] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Metrics:
        """Fresh families; in multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set."""
        registry = CollectorRegistry(auto_describe=True)
        multi = bool(os.environ.get(MULTIPROC_ENV))
        pm = ("provider", "model")
        pr = ("provider", "reason")
        return cls(
            registry=registry,
            multiprocess=multi,
            requests=Counter(
                "llmgateway_requests",
                "Client requests answered, by provider, model and HTTP status code.",
                (*pm, "code"),
                registry=registry,
            ),
            request_duration=Histogram(
                "llmgateway_request_duration_seconds",
                "Whole request time, from arrival to the last byte sent.",
                pm,
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            time_to_first_byte=Histogram(
                "llmgateway_time_to_first_byte_seconds",
                "Time from arrival to the first body byte relayed (the whole answer if not "
                "streamed).",
                pm,
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            overhead=Histogram(
                "llmgateway_overhead_seconds",
                "The gateway's own time per request: total minus time waiting on upstream.",
                ("provider",),
                registry=registry,
                buckets=OVERHEAD_BUCKETS,
            ),
            upstream_attempts=Counter(
                "llmgateway_upstream_attempts",
                "Upstream calls, by how they ended (ok or an error reason).",
                pr,
                registry=registry,
            ),
            retries=Counter(
                "llmgateway_retries",
                "Retries on another key, by the reason of the failed attempt.",
                pr,
                registry=registry,
            ),
            inflight=Gauge(
                "llmgateway_inflight_requests",
                "Requests being served now.",
                ("provider",),
                registry=registry,
                multiprocess_mode="livesum",
            ),
            key_cooldowns=Counter(
                "llmgateway_key_cooldowns",
                "Keys the gateway took out of rotation (cooldown, ejection, invalid), by reason.",
                pr,
                registry=registry,
            ),
            circuit_breaker_state=Gauge(
                "llmgateway_circuit_breaker_state",
                "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
                ("provider",),
                registry=registry,
                multiprocess_mode="livemax",
            ),
            probes=Counter(
                "llmgateway_probes",
                "Key probes by the Keeper, by result (healthy, failed, verifying, egress).",
                ("provider", "result"),
                registry=registry,
            ),
            probe_duration=Histogram(
                "llmgateway_probe_duration_seconds",
                "Time of one key probe.",
                ("provider",),
                registry=registry,
                buckets=PROBE_BUCKETS,
            ),
            sync_changes=Counter(
                "llmgateway_sync_changes",
                "Changes made by file syncs: kind keys|proxies, change added|removed|restored.",
                ("provider", "kind", "change"),
                registry=registry,
            ),
            limiter_unavailable=Counter(
                "llmgateway_limiter_unavailable",
                "Requests let through without per-key limits because the limits backend "
                "(Redis or PostgreSQL) was unreachable (fail open).",
                ("provider",),
                registry=registry,
            ),
            event_loop_tasks=Gauge(
                "llmgateway_event_loop_tasks",
                "Tasks alive in the process's event loop: requests being served and background "
                "work. Steady under steady load; a climb is a leak.",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            auth_failures=Counter(
                "llmgateway_auth_failures",
                "Requests refused 401 for their gateway token, by the API shape of the answer "
                "(openai, gemini, anthropic), or for the admin token of the web console (admin), "
                "and reason (missing, wrong).",
                ("surface", "reason"),
                registry=registry,
            ),
            routes=RouteMetrics.create(registry),
            config_reloads=Counter(
                "llmgateway_config_reloads",
                "Config reloads (SIGHUP, a changed file, `llmgateway reload`), by outcome: "
                "applied, refused (the old config stays) or unchanged.",
                ("outcome",),
                registry=registry,
            ),
            tokens=Counter(
                "llmgateway_tokens",
                "Tokens of the answers relayed, as the upstream's usage reported them, by "
                "direction: input, output, cached (part of input), reasoning (part of output).",
                (*pm, "direction"),
                registry=registry,
            ),
            usage_missing=Counter(
                "llmgateway_usage_missing",
                "Answers relayed that carried no usage (a stream cut short, a stream without "
                "its usage chunk, an endpoint that reports none): their tokens are not counted.",
                pm,
                registry=registry,
            ),
        )

    def for_provider(self, name: str, models: Iterable[str] = ()) -> ProviderMetrics:
        """The bound children of provider `name` (made on first use with its `models`)."""
        bound = self._providers.get(name)
        if bound is None:
            bound = self._providers[name] = ProviderMetrics(
                self,
                name,
                frozenset(models),
                self.inflight.labels(name),
                Tally(self.overhead.labels(name)),
            )
        return bound

    def flush(self) -> None:
        """Hand every provider's and route's request tallies to prometheus-client, and count
        the tasks of the running event loop (if any)."""
        for bound in self._providers.values():
            bound.flush()
        self.routes.flush()
        with contextlib.suppress(RuntimeError):  # no running loop: leave the last count
            self.event_loop_tasks.set(len(asyncio.all_tasks()))

    async def flush_every(self, seconds: float = FLUSH_SEC) -> None:
        """Flush forever (with several worker processes a scrape reads every process's values
        from files, so each process flushes on its own)."""
        while True:
            await asyncio.sleep(seconds)
            self.flush()

    def unauthorized(self, code: int) -> None:
        """Count a request refused before a provider was known (no or a wrong token)."""
        self.requests.labels(NO_PROVIDER, OTHER_MODEL, str(code)).inc()

    def auth_failed(self, surface: str, reason: str) -> None:
        """Count a request refused for its token: `surface` openai, gemini or anthropic (a
        gateway token) or admin (the console's), `reason` missing or wrong (bounded labels;
        never the token)."""
        self.auth_failures.labels(surface, reason).inc()

    def probe(self, provider: str, result: str, seconds: float) -> None:
        """Count one key probe of the Keeper and its duration."""
        self.probes.labels(provider, result).inc()
        self.probe_duration.labels(provider).observe(seconds)

    def sync_change(self, provider: str, kind: str, change: str, count: int) -> None:
        """Count `count` sync changes (nothing for 0)."""
        if count:
            self.sync_changes.labels(provider, kind, change).inc(count)

    def synced(self, report: Synced) -> None:
        """Count what one file sync changed, per provider and kind."""
        for result in report.providers:
            for kind, changes in (("keys", result.keys), ("proxies", result.proxies)):
                if changes is None:
                    continue
                for change in ("added", "removed", "restored"):
                    self.sync_change(result.provider, kind, change, getattr(changes, change))

    def exposition(
        self, keys: Iterable[KeyCount] = (), stored: Iterable[StatusCount] | None = None
    ) -> bytes:
        """The Prometheus text of every family, plus `llmgateway_keys` and
        `llmgateway_key_states` from `keys`, and `llm_gateway_keys_total` from `stored` (the
        store's counts; None: a process that does not read them, and no such family)."""
        self.flush()
        if self.multiprocess:
            merged = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            text = generate_latest(merged)
        else:
            text = generate_latest(self.registry)
        snapshot = CollectorRegistry()
        snapshot.register(_KeysCollector(tuple(keys)))
        if stored is not None:
            snapshot.register(_LegacyKeysCollector(tuple(stored)))
        return text + generate_latest(snapshot)

    def process_exited(self) -> None:
        """Flush, and in multiprocess mode drop this process's live gauges (call when it
        stops)."""
        self.flush()
        if self.multiprocess:
            prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class _KeysCollector(Collector):
    def __init__(self, keys: tuple[KeyCount, ...]) -> None:
        self._keys = keys

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llmgateway_keys",
            "Keys by provider, model (shared: one status for all models) and status.",
            labels=("provider", "model", "status"),
        )
        states = GaugeMetricFamily(
            "llmgateway_key_states",
            "Keys by provider, model (shared: one status for all models) and state: what key "
            "selection does with them (healthy, untested, cooling, ejected, invalid, no_quota, "
            "no_model; the Keeper's view: disabled too).",
            labels=("provider", "model", "state"),
        )
        by_state: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for row in self._keys:
            family.add_metric((row.provider, row.model, row.status), row.count)
            by_state[row.provider, row.model, row.state] += row.count
        for labels, count in sorted(by_state.items()):
            states.add_metric(labels, count)
        yield family
        yield states


class _LegacyKeysCollector(Collector):
    def __init__(self, counts: tuple[StatusCount, ...]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            LEGACY_KEYS,
            "Deprecated (the original llmGateway's gauge, removed in 0.3.0): keys in the store "
            "by provider, model (shared: one status for all models) and stored status. Every "
            "process exports the same counts: aggregate with max(), not sum().",
            labels=("provider", "model", "status"),
        )
        for row in self._counts:
            family.add_metric((row.provider, row.model, row.status), row.count)
        yield family


def pool_key_counts(
    provider: str, pool: KeyPool, models: Iterable[str], now: float
) -> list[KeyCount]:
    """`llmgateway_keys` samples of one gateway pool (configured models and `shared` only)."""
    listed = set(models) | {ALL_MODELS}
    return [
        KeyCount(provider, model_label(scope), state, count, state)
        for (scope, state), count in sorted(pool.counts(now).items())
        if scope in listed
    ]


def store_key_counts(counts: Iterable[StatusCount]) -> list[KeyCount]:
    """Key counts from the store's status counts (the Keeper's view): `llmgateway_keys` shows
    the stored statuses, `llmgateway_key_states` the states they stand for."""
    return [KeyCount(c.provider, c.model, c.status, c.count, shown_state(c.status)) for c in counts]
