"""Prometheus metrics: every family the README's Metrics section lists, prefix `llmgateway_`.

No label ever carries a key, a key id or a token; `model` is bounded to the configured models
(anything else is `other`). Histograms use LLM-sized buckets up to 600 s.

One `Metrics` per process holds the families on its own registry. With several gateway worker
processes (`gateway --workers N`), `PROMETHEUS_MULTIPROC_DIR` is set before the workers start:
prometheus-client then keeps every process's values in files there, and a scrape, whichever
process answers it, adds them up (`multiprocess_mode` says how for each gauge). `keys` is
computed at scrape time by the answering process (every process holds the same pool snapshot).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
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

from llmgateway.core.outcomes import ALL_MODELS, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.resilience import BreakerState
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
OTHER_MODEL = "other"
SHARED_MODEL = "shared"
NO_PROVIDER = "none"


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
    """One sample of `llmgateway_keys`: keys of a provider and model in a status."""

    provider: str
    model: str
    status: str
    count: int


def model_label(model: str) -> str:
    """The `model` label of a status scope (`shared` under shared_key_status)."""
    return SHARED_MODEL if model == ALL_MODELS else model


def reason_label(outcome: Outcome) -> str:
    """The `reason` label of an outcome: `ok`, or its ErrorReason value."""
    if outcome.reason is None:
        return "ok"
    return outcome.reason.value


@dataclass(slots=True)
class Timing:
    """One request's clock readings (`time.perf_counter()` seconds).

    `upstream` adds up the time spent waiting on the provider (response headers of every
    attempt, error bodies, body chunks), so `overhead = total - upstream` is the gateway's own
    time: auth, body read, key selection, classification, retry backoff, relaying.
    """

    started: float = field(default_factory=time.perf_counter)
    upstream: float = 0.0
    first_byte: float | None = None

    def waited(self, since: float) -> None:
        """Count the time from `since` until now as waiting on the provider."""
        self.upstream += time.perf_counter() - since


class _Tally:
    """A histogram child's observations since its last flush: a bucket index costs one
    bisect, where prometheus-client's `observe()` walks the buckets under a lock."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        # prometheus-client has no bulk observe; its child keeps one value per bucket
        # (non-cumulative) and one for the sum, which is what observe() increments
        buckets = self.child._buckets
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


@dataclass(slots=True)
class ProviderMetrics:
    """One provider's metrics. Per-request figures are tallied in plain ints and handed to
    prometheus-client by `flush()` (at every scrape, and every second with several worker
    processes), so a request costs a few dict updates instead of a dozen locked increments."""

    family: Metrics
    name: str
    models: frozenset[str]
    inflight_gauge: Gauge
    overhead: _Tally
    inflight: int = 0
    _requests: dict[tuple[str, int], int] = field(default_factory=dict)
    _attempts: dict[str, int] = field(default_factory=dict)
    _latency: dict[str, tuple[_Tally, _Tally]] = field(default_factory=dict)
    _retries: dict[str, Counter] = field(default_factory=dict)
    _cooldowns: dict[str, Counter] = field(default_factory=dict)
    _limiter_unavailable: Counter | None = None

    def model(self, model: str) -> str:
        """`model` when it is configured, else `other` (labels stay bounded)."""
        return model if model in self.models else OTHER_MODEL

    def started(self) -> None:
        """A request of this provider began (pair with `finished`)."""
        self.inflight += 1

    def finished(self, model: str, code: int, timing: Timing) -> None:
        """Record a finished request: its code, duration, time to first byte and overhead."""
        now = time.perf_counter()
        self.inflight -= 1
        label = model if model in self.models else OTHER_MODEL
        key = (label, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(label)
        if latency is None:
            latency = self._latency[label] = (
                _Tally(self.family.request_duration.labels(self.name, label)),
                _Tally(self.family.time_to_first_byte.labels(self.name, label)),
            )
        total = now - timing.started
        latency[0].observe(total)
        first = timing.first_byte if timing.first_byte is not None else now
        latency[1].observe(first - timing.started)
        self.overhead.observe(max(total - timing.upstream, 0.0))

    def refused(self, code: int) -> None:
        """Count a request answered before a key was taken (its path, route, body or model),
        under the model label `other`: a requested name never becomes a label."""
        key = (OTHER_MODEL, code)
        self._requests[key] = self._requests.get(key, 0) + 1

    def attempt(self, outcome: Outcome) -> None:
        """Count one upstream attempt by how it ended."""
        reason = "ok" if outcome.reason is None else outcome.reason.value
        self._attempts[reason] = self._attempts.get(reason, 0) + 1

    def flush(self) -> None:
        """Hand the tallies since the last flush to prometheus-client."""
        family = self.family
        requests, self._requests = self._requests, {}
        for (label, code), count in requests.items():
            family.requests.labels(self.name, label, str(code)).inc(count)
        attempts, self._attempts = self._attempts, {}
        for reason, count in attempts.items():
            family.upstream_attempts.labels(self.name, reason).inc(count)
        for duration, first_byte in self._latency.values():
            duration.flush()
            first_byte.flush()
        self.overhead.flush()
        self.inflight_gauge.set(self.inflight)

    def retry(self, outcome: Outcome) -> None:
        """Count one retry on another key, by the reason of the attempt that failed."""
        self._count(self._retries, self.family.retries, reason_label(outcome))

    def cooldown(self, reason: str) -> None:
        """Count a key taken out of rotation by the gateway (cooldown, ejection, invalid)."""
        self._count(self._cooldowns, self.family.key_cooldowns, reason)

    def limiter_unavailable(self) -> None:
        """Count a request let through without per-key limits: their backend was unreachable."""
        child = self._limiter_unavailable
        if child is None:
            child = self._limiter_unavailable = self.family.limiter_unavailable.labels(self.name)
        child.inc()

    def breaker(self, state: BreakerState) -> None:
        """Set this provider's circuit breaker state (0 closed, 1 half-open, 2 open)."""
        self.family.circuit_breaker_state.labels(self.name).set(int(state))

    def _count(self, children: dict[str, Counter], parent: Counter, reason: str) -> None:
        child = children.get(reason)
        if child is None:
            child = children[reason] = parent.labels(self.name, reason)
        child.inc()


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
                _Tally(self.overhead.labels(name)),
            )
        return bound

    def flush(self) -> None:
        """Hand every provider's request tallies to prometheus-client, and count the tasks
        of the running event loop (if any)."""
        for bound in self._providers.values():
            bound.flush()
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

    def exposition(self, keys: Iterable[KeyCount] = ()) -> bytes:
        """The Prometheus text of every family, plus `llmgateway_keys` from `keys`."""
        self.flush()
        if self.multiprocess:
            merged = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            text = generate_latest(merged)
        else:
            text = generate_latest(self.registry)
        snapshot = CollectorRegistry()
        snapshot.register(_KeysCollector(tuple(keys)))
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
        for row in self._keys:
            family.add_metric((row.provider, row.model, row.status), row.count)
        yield family


def pool_key_counts(
    provider: str, pool: KeyPool, models: Iterable[str], now: float
) -> list[KeyCount]:
    """`llmgateway_keys` samples of one gateway pool (configured models and `shared` only)."""
    listed = set(models) | {ALL_MODELS}
    return [
        KeyCount(provider, model_label(scope), state, count)
        for (scope, state), count in sorted(pool.counts(now).items())
        if scope in listed
    ]


def store_key_counts(counts: Iterable[StatusCount]) -> list[KeyCount]:
    """`llmgateway_keys` samples from the store's status counts (the Keeper's view)."""
    return [KeyCount(c.provider, c.model, c.status, c.count) for c in counts]
