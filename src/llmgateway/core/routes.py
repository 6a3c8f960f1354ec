"""Routes: one model alias served by targets on several providers, and what a gateway-wide
token may name.

The types here are built once, when the config is loaded (`llmgateway.config.routes`), so that
a request's work is a dict lookup (`resolve_model`) and a short plan (`core.route_plan`).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from llmgateway.core.clients import ClientRules


class FallbackReason(enum.StrEnum):
    """The outcomes of a target after which a route may try its next target: the retryable
    `ErrorReason` values, quota and retired-model answers, and `no_healthy_key` (the target
    had no key to try, or every key it tried was refused as the key's fault)."""

    RATE_LIMITED = "rate_limited"
    NO_QUOTA = "no_quota"
    SERVER_ERROR = "server_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    NETWORK_ERROR = "network_error"
    EGRESS_ERROR = "egress_error"
    STREAM_DISCONNECT = "stream_disconnect"
    NO_MODEL = "no_model"
    NO_HEALTHY_KEY = "no_healthy_key"


DEFAULT_FALLBACK_ON = frozenset(FallbackReason)
"""`fallback_on` when the config names none: every reason above."""


class StreamCommit(enum.StrEnum):
    """When a streamed answer is committed to the client (no fallback after it)."""

    FIRST_BYTE = "first_byte"  # the upstream's 200: nothing held back
    FIRST_EVENT = "first_event"  # the first SSE data or error event (comments skipped)


Surface = Literal["openai", "gemini", "anthropic"]
"""Where a request came in: "openai" (`/v1/…` with a Bearer token), "gemini" (native) or
"anthropic" (the Messages API, and the models list asked with the token in x-api-key)."""


def target_header(label: str) -> tuple[bytes, bytes]:
    """The `x-llmgateway-target` response header naming target `label` (`provider/model`)."""
    return (b"x-llmgateway-target", label.encode("ascii", "replace"))


@dataclass(frozen=True, slots=True)
class Target:
    """One provider's model behind a route alias."""

    provider: str
    model: str
    weight: float = 1.0
    priority: int = 0
    label: str = dataclasses.field(init=False, compare=False, repr=False)
    """`provider/model`, as response headers and logs name the target."""
    header: tuple[bytes, bytes] = dataclasses.field(init=False, compare=False, repr=False)
    """The `x-llmgateway-target` response header naming it (ASCII; anything else replaced)."""

    def __post_init__(self) -> None:
        label = f"{self.provider}/{self.model}"
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "header", target_header(label))


@dataclass(frozen=True, slots=True)
class Route:
    """A route alias and how its requests are spread and fall back.

    `tiers` are the targets grouped by priority, lowest priority number first, each tier in
    config order (`tiered()`). `attempts_per_target` None means the provider's own key-level
    retries.
    """

    alias: str
    tiers: tuple[tuple[Target, ...], ...]
    fallback_on: frozenset[str] = DEFAULT_FALLBACK_ON
    fallback_on_status: frozenset[int] = frozenset()
    attempts_per_target: int | None = None
    max_targets: int = 3
    context_length_fallback: str | None = None
    stream_commit: StreamCommit = StreamCommit.FIRST_EVENT
    peek_timeout_sec: float = 10.0
    headers: bool = True
    totals: tuple[float, ...] = dataclasses.field(init=False, compare=False, repr=False)
    """The sum of each tier's weights (`core.route_plan.plan` draws against it)."""
    cuts: tuple[float, ...] = dataclasses.field(init=False, compare=False, repr=False)
    """Where the first tier's targets meet on the line of its weights, laid end to end
    (`core.route_plan.first` draws with a bisection; empty for a single target)."""
    header: tuple[bytes, bytes] = dataclasses.field(init=False, compare=False, repr=False)
    """The `x-llmgateway-route` response header naming it (ASCII; anything else replaced)."""
    peek_sec: float | None = dataclasses.field(init=False, compare=False, repr=False)
    """How long a stream is held back for its first event (None: committed at its first
    byte)."""

    def __post_init__(self) -> None:
        first_event = self.stream_commit is StreamCommit.FIRST_EVENT
        object.__setattr__(self, "peek_sec", self.peek_timeout_sec if first_event else None)
        totals = tuple(sum(t.weight for t in tier) for tier in self.tiers)
        object.__setattr__(self, "totals", totals)
        weights = [t.weight for t in self.tiers[0]] if self.tiers else []
        object.__setattr__(self, "cuts", tuple(itertools.accumulate(weights[:-1])))
        header = (b"x-llmgateway-route", self.alias.encode("ascii", "replace"))
        object.__setattr__(self, "header", header)

    @property
    def targets(self) -> tuple[Target, ...]:
        """Every target, tier by tier."""
        return tuple(t for tier in self.tiers for t in tier)

    def only(self, providers: frozenset[str]) -> Route | None:
        """This route with only the targets on `providers` (those a surface can serve), or
        None when none is left."""
        tiers = tuple(kept for tier in self.tiers if (kept := _on(tier, providers)))
        if tiers == self.tiers:
            return self
        return dataclasses.replace(self, tiers=tiers) if tiers else None


def tiered(targets: tuple[Target, ...]) -> tuple[tuple[Target, ...], ...]:
    """`targets` (config order) grouped by priority, lowest priority number first."""
    priorities = sorted({t.priority for t in targets})
    return tuple(tuple(t for t in targets if t.priority == p) for p in priorities)


def _on(tier: tuple[Target, ...], providers: frozenset[str]) -> tuple[Target, ...]:
    return tuple(t for t in tier if t.provider in providers)


@dataclass(frozen=True, slots=True)
class Reach:
    """What a token may name on one surface: route aliases (each restricted to the targets the
    surface can serve) and providers for `<provider>/<model>` addressing."""

    routes: Mapping[str, Route]
    providers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Grants:
    """A gateway-wide token's reach on each surface, worked out when the config is loaded;
    `name` is the token's name (for logs and metrics, never the token); `client` its expiry,
    address ranges and limits (None: it has none)."""

    name: str
    openai: Reach
    gemini: Reach
    anthropic: Reach
    client: ClientRules | None = None
    reach: Mapping[Surface, Reach] = dataclasses.field(init=False, compare=False, repr=False)
    """The reach by surface (what `on` answers, as one lookup)."""

    def __post_init__(self) -> None:
        reach = {"openai": self.openai, "gemini": self.gemini, "anthropic": self.anthropic}
        object.__setattr__(self, "reach", reach)

    def on(self, surface: Surface) -> Reach:
        """The reach on `surface`."""
        return self.reach[surface]


@dataclass(frozen=True, slots=True)
class RouteHit:
    """The model named a route alias the token may use."""

    route: Route


@dataclass(frozen=True, slots=True)
class ProviderHit:
    """The model named `<provider>/<model>` for a provider the token may use."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """Nothing the token may use has this name: 404 `model_not_found` (an alias or provider
    that exists but is not the token's is not told apart, so names do not leak)."""

    model: str


def resolve_model(model: str, reach: Reach) -> RouteHit | ProviderHit | NotFound:
    """What `model` names for a token with `reach`: an exact route alias first; else
    `<provider>/<rest>` when the part before the first `/` is a provider the token may use
    (`rest` may hold `/` of its own: `openrouter/openai/gpt-4o` is model `openai/gpt-4o` on
    provider `openrouter`); else not found. Two dict lookups at most, never a scan."""
    route = reach.routes.get(model)
    if route is not None:
        return RouteHit(route)
    provider, slash, rest = model.partition("/")
    if slash and rest and provider in reach.providers:
        return ProviderHit(provider, rest)
    return NotFound(model)
