"""What the attempt loop serves: a provider as the gateway runs it (`Provider`, built once at
start), and one client request to it as the edge parsed it (`Call`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgateway import providers
from llmgateway.config.settings import ProviderSettings
from llmgateway.core.guard import Guard
from llmgateway.core.pool import KeyPool
from llmgateway.core.resilience import RetryBudget
from llmgateway.limits import KeyLimiter
from llmgateway.observe import logs
from llmgateway.observe.provider_metrics import Timing
from llmgateway.providers import headers as wire_headers
from llmgateway.providers.catalog import Catalog
from llmgateway.providers.routes import Route, RouteTable, Surface, tables


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider instance as the gateway runs it: its settings, pool, resilience state, and
    what it serves (routes, models, forwarded headers), all built once at start."""

    name: str
    settings: ProviderSettings
    pool: KeyPool
    budget: RetryBudget
    guard: Guard
    limiter: KeyLimiter | None = None  # fleet-wide per-key limits, when the provider sets any
    routes: dict[Surface, RouteTable] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog(frozenset(), ()))
    forwarded: dict[Surface, frozenset[str]] = field(default_factory=dict)
    # the pool's key secrets, to scrub upstream error bodies with; learnt as keys join
    secrets: logs.Redactor = field(default_factory=logs.Redactor)
    # what the models lists show: the configured names, then the upstream's names a pattern
    # serves as the Keeper last fetched them (`list_models`)
    listed: list[str] = field(default_factory=list)
    # its keys have a `tpm`: every answer's usage is read to settle their reservations
    metered: bool = False

    @classmethod
    def build(
        cls,
        name: str,
        settings: ProviderSettings,
        pool: KeyPool,
        budget: RetryBudget,
        guard: Guard,
        limiter: KeyLimiter | None = None,
    ) -> Provider:
        """A provider with its routes, model catalog and header allow-lists derived from
        `settings`."""
        routes = tables(settings)
        forwarded = {
            surface: wire_headers.allowed_names(settings.provider_type, surface)
            for surface in routes
        }
        catalog = Catalog.of(settings.models)
        metered = limiter is not None and limiter.metered
        provider = cls(
            name,
            settings,
            pool,
            budget,
            guard,
            limiter,
            routes,
            catalog,
            forwarded,
            metered=metered,
        )
        provider.list_models([])
        return provider

    def list_models(self, upstream: list[str]) -> None:
        """Take the upstream's model names (as the Keeper last fetched them) into the models
        list, filtered once here rather than on every request for the list."""
        self.listed[:] = self.catalog.listed(upstream)


@dataclass(slots=True)  # not frozen: built for every request, and frozen inits cost more
class Call:
    """One client request, as the edge parsed it (the body is forwarded as raw bytes)."""

    provider: Provider
    api: providers.Api
    route: Route
    method: str
    path: str  # the validated raw path, forwarded as it is
    query: str  # the validated raw query, credentials removed
    headers: dict[str, str]  # the allow-listed client headers
    body: bytes
    model: str  # the configured model (name or pattern) serving the request: its scope
    stream: bool
    client_retry: bool
    timing: Timing = field(default_factory=Timing)
    # `commit: first_event`: a stream is held back up to this long for its first event, and
    # falls back like an HTTP error when that is one (None: committed at its first byte)
    peek_sec: float | None = None
    max_attempts: int | None = None  # a route's `attempts_per_target` (None: the policy's)
    client: str = "-"  # the gateway token's name (`gateway.tokens`), for the token counts
    alias: str = "-"  # the route alias it came through
    strip_usage: bool = False  # the gateway asked for the usage chunk: the client gets none
    metered: bool = False  # holds a client's tpm reservation: its answer's usage is read
    # the answer's tokens, read when metered: 0 until an answer is relayed, None when the
    # answer reported none
    used: int | None = 0
