"""The routes' metrics: requests by outcome, fallbacks from one target to the next with the
reason, and requests that ran out of targets. Labels are bounded by the config: route aliases
and `provider/model` targets as configured, reasons from a fixed vocabulary; never a key or a
token."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

NO_TARGET = "none"
"""The `to` of a fallback that found no further target."""


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    """The route families of one process's registry."""

    requests: Counter
    fallbacks: Counter
    exhausted: Counter
    # requests counted since the last flush, by (route, outcome): a dict increment per request,
    # where prometheus-client's inc() takes a lock (handed over in `flush()`, as the providers'
    # request counts are)
    _counts: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def request(self, route: str, outcome: str) -> None:
        """Count one request for `route` that ended with `outcome`."""
        self._counts[(route, outcome)] += 1

    def flush(self) -> None:
        """Hand the requests counted since the last flush to prometheus-client."""
        counts = self._counts
        for (route, outcome), count in list(counts.items()):
            if count:
                self.requests.labels(route, outcome).inc(count)
                counts[(route, outcome)] = 0

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RouteMetrics:
        """The families, on `registry`."""
        return cls(
            requests=Counter(
                "llmgateway_route_requests",
                "Requests for a route alias, by outcome: ok (an answer relayed), error (an "
                "error answered without falling back: the client's fault, or no fallback "
                "reason), exhausted (every target failed), client_gone.",
                ("route", "outcome"),
                registry=registry,
            ),
            fallbacks=Counter(
                "llmgateway_route_fallbacks",
                "Moves from one target of a route to the next (`to` none: no target was left), "
                "by the reason of the target left.",
                ("route", "from_target", "to_target", "reason"),
                registry=registry,
            ),
            exhausted=Counter(
                "llmgateway_route_exhausted",
                "Requests for a route whose every target failed, by the status answered.",
                ("route", "code"),
                registry=registry,
            ),
        )
