"""One provider's request figures, tallied on the request path and handed to prometheus-client
in bulk (`ProviderMetrics.flush()`), and one request's clock readings (`Timing`).

`model` labels are bounded to the provider's configured models: anything else is `other`.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

from llmgateway.core.outcomes import Outcome
from llmgateway.core.resilience import BreakerState
from llmgateway.providers.usage import Tokens

DIRECTIONS = ("input", "output", "cached", "reasoning")
"""The `direction` label values of `llmgateway_tokens_total`."""

OTHER_MODEL = "other"
"""The `model` label of a model the provider does not configure (and of refused requests)."""


class Families(Protocol):
    """The metric families a provider's figures go to (`observe.metrics.Metrics` holds them)."""

    @property
    def requests(self) -> Counter: ...
    @property
    def request_duration(self) -> Histogram: ...
    @property
    def time_to_first_byte(self) -> Histogram: ...
    @property
    def upstream_attempts(self) -> Counter: ...
    @property
    def retries(self) -> Counter: ...
    @property
    def key_cooldowns(self) -> Counter: ...
    @property
    def limiter_unavailable(self) -> Counter: ...
    @property
    def circuit_breaker_state(self) -> Gauge: ...
    @property
    def tokens(self) -> Counter: ...
    @property
    def usage_missing(self) -> Counter: ...


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


class Tally:
    """A histogram child's observations since its last flush: a bucket index costs one
    bisect, where prometheus-client's `observe()` walks the buckets under a lock."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        """Add the observations since the last flush to the histogram child."""
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

    family: Families
    name: str
    models: frozenset[str]
    inflight_gauge: Gauge
    overhead: Tally
    inflight: int = 0
    _requests: dict[tuple[str, int], int] = field(default_factory=dict)
    _attempts: dict[str, int] = field(default_factory=dict)
    _latency: dict[str, tuple[Tally, Tally]] = field(default_factory=dict)
    _retries: dict[str, Counter] = field(default_factory=dict)
    _cooldowns: dict[str, Counter] = field(default_factory=dict)
    _limiter_unavailable: Counter | None = None
    _tokens: dict[str, list[int]] = field(default_factory=dict)  # model label → 4 counts + missing

    def model(self, model: str) -> str:
        """`model` when it is configured, else `other` (labels stay bounded)."""
        return model if model in self.models else OTHER_MODEL

    def started(self) -> None:
        """A request of this provider began (pair with `finished`, or `uncounted`)."""
        self.inflight += 1

    def uncounted(self) -> None:
        """A request that began ended without being this provider's to count: a route's
        target that found no key to call with (the route answers for it)."""
        self.inflight -= 1

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
                Tally(self.family.request_duration.labels(self.name, label)),
                Tally(self.family.time_to_first_byte.labels(self.name, label)),
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

    def tokens(self, model: str, tokens: Tokens | None) -> None:
        """Count one relayed answer's tokens (None: it carried no usage)."""
        label = model if model in self.models else OTHER_MODEL
        held = self._tokens.get(label)
        if held is None:
            held = self._tokens[label] = [0, 0, 0, 0, 0]
        if tokens is None:
            held[4] += 1
            return
        held[0] += tokens.input
        held[1] += tokens.output
        held[2] += tokens.cached
        held[3] += tokens.reasoning

    def flush(self) -> None:
        """Hand the tallies since the last flush to prometheus-client."""
        family = self.family
        counted, self._tokens = self._tokens, {}
        for label, values in counted.items():
            for direction, value in zip(DIRECTIONS, values, strict=False):
                if value:
                    family.tokens.labels(self.name, label, direction).inc(value)
            if values[4]:
                family.usage_missing.labels(self.name, label).inc(values[4])
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
