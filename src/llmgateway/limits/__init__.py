"""Per-key limits that hold across every gateway process: `max_concurrent`, `rpm` and `tpm`
(tokens in any 60 s window: each request reserves its estimate, `reservation.py`, when the key
is acquired, and the reservation is replaced by the answer's real usage when it is released).

A provider sets them in `gateway_policy.key_limits`; they apply to each key, or to each key ×
model when the provider's status is not shared (`shared_key_status: false`), since providers
limit per model. The attempt loop asks `KeyLimiter.acquire(lease)` for each key the pool
picks; a refused key is put back and the next one tried; when every key is refused the client
gets 429 with Retry-After. Providers without limits have no limiter: their requests pay
nothing for this feature.

Where the counting happens is `limits.backend` (`backend_of()`):
- `redis` (recommended): exact across processes and machines; one round trip per acquire, one
  fire-and-forget call per release (`redis_backend.py`).
- `postgres`: each gateway counts in memory against its share of each limit, the fleet being
  counted through advisory locks, or lease rows through a transaction pooler (`fleet.py`): no
  round trip per request, approximate while gateways join or leave.
- `local`: counted in this process only (exact for a single gateway process).
- `auto` (the default): redis when `limits.redis_url` is set, else postgres when the store is
  PostgreSQL, else local.

An unreachable backend fails open: requests proceed unlimited, each one counted in
`llmgateway_limiter_unavailable_total{provider}`, with a warning at most once a minute
(`outage.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llmgateway.config.settings import KeyLimits, LimitsBackend, Settings
from llmgateway.core.pool_keys import Lease
from llmgateway.limits.counts import LocalCounts, Refusal, share_of
from llmgateway.limits.outage import Outage, Unreachable
from llmgateway.observe.metrics import Metrics

__all__ = [
    "Backend",
    "KeyLimiter",
    "Limits",
    "LocalBackend",
    "Refusal",
    "Unreachable",
    "backend_of",
    "share_of",
]

log = logging.getLogger("llmgateway.limits")

Slot = tuple[str, int, str]


@dataclass(slots=True)
class LocalBackend:
    """Counts in this process: exact for one gateway process, per process for several."""

    outage: Outage
    name: str = "local"
    counts: LocalCounts = field(default_factory=LocalCounts)

    async def take(
        self, slot: Slot, token: int, limits: KeyLimits, now: float, amount: int = 0
    ) -> Refusal | None:
        """Count one request on `slot` (reserving `amount` tokens when `limits.tpm` is set),
        or say why it may not start now."""
        most, rpm = limits.max_concurrent, limits.rpm
        return self.counts.take(slot, (slot[0], token), most, rpm, now, limits.tpm, amount)

    async def reserve(
        self, slot: Slot, token: int, tpm: int, amount: int, now: float
    ) -> Refusal | None:
        """Reserve `amount` tokens on `slot` as `token` (nothing held in flight)."""
        return self.counts.reserve(slot, (slot[0], token), tpm, amount, now)

    def give_back(self, provider: str, token: int) -> None:
        """The request held as `token` ended."""
        self.counts.give_back((provider, token))

    def spent(self, slot: Slot, token: int, amount: int | None) -> None:
        """The request that reserved tokens on `slot` as `token` used `amount` (None: the
        reservation stands)."""
        self.counts.spent((slot[0], token), amount)

    async def start(self) -> None:
        """Nothing to start."""

    async def run(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        """Nothing to close."""


if TYPE_CHECKING:  # the Redis and PostgreSQL clients load only when configured (memory)
    from llmgateway.limits.fleet import PostgresBackend
    from llmgateway.limits.redis_backend import RedisBackend

    Backend = LocalBackend | RedisBackend | PostgresBackend
    """Where limits are counted; each has `take`, `reserve`, `give_back`, `spent`, `start`,
    `run`, `close`, `outage`."""


@dataclass(slots=True)
class KeyLimiter:
    """The per-key limits of one provider, asked for every key the attempt loop picks."""

    provider: str
    limits: KeyLimits
    backend: Backend
    clock: Callable[[], float]
    unavailable: Callable[[], None]  # counts one request let through by failing open
    _rate_until: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def metered(self) -> bool:
        """Whether the keys have a `tpm`: requests reserve tokens (`acquire`'s `amount`) and
        their answers' usage is read to adjust them (`release`'s `used`)."""
        return self.limits.tpm is not None

    async def acquire(self, lease: Lease, amount: int = 0) -> Refusal | None:
        """None: the key may serve this request, reserving `amount` tokens against its `tpm`
        (pair it with `release`); else why not."""
        now = self.clock()
        slot = (lease.key_id, lease.scope)
        until = self._rate_until.get(slot)
        if until is not None:
            if now < until:  # its window cannot have freed yet: no need to ask the backend
                return Refusal("rate", until - now)
            del self._rate_until[slot]
        backend = self.backend
        if backend.outage.down(now):
            self.unavailable()
            return None
        try:
            refusal = await backend.take(
                (self.provider, lease.key_id, lease.scope), lease.lease_id, self.limits, now, amount
            )
        except Unreachable as error:
            backend.outage.failed(backend.name, error)
            self.unavailable()
            return None
        if refusal is not None and refusal.reason == "rate":
            self._rate_until[slot] = now + refusal.retry_after
        return refusal

    def release(self, lease: Lease, used: int | None = 0) -> None:
        """The request on `lease` ended, having used `used` tokens (0: no answer came; None:
        its usage is unknown and the reservation stands); a lease never granted is ignored."""
        self.backend.give_back(self.provider, lease.lease_id)
        if self.limits.tpm is not None:
            slot = (self.provider, lease.key_id, lease.scope)
            self.backend.spent(slot, lease.lease_id, used)


def backend_of(settings: Settings) -> LimitsBackend:
    """The backend the config selects (`auto` resolved: redis when `limits.redis_url` is set,
    else postgres when the store is PostgreSQL, else local)."""
    chosen = settings.limits.backend
    if chosen is not LimitsBackend.AUTO:
        return chosen
    if settings.limits.redis_url:
        return LimitsBackend.REDIS
    if settings.database.backend == "postgresql":
        return LimitsBackend.POSTGRES
    return LimitsBackend.LOCAL


@dataclass(slots=True)
class Limits:
    """One gateway process's per-key limits: the chosen backend, shared by the limiters of the
    providers that set `gateway_policy.key_limits`."""

    backend: Backend
    metrics: Metrics
    clock: Callable[[], float]
    description: str

    @classmethod
    def create(
        cls, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> Limits | None:
        """The limits of `settings`, or None when nothing asks for a backend: no enabled
        provider sets per-key limits, no `gateway.tokens` entry sets `rpm`, `tpm` or
        `max_parallel`,
        and `limits.backend` is `auto` (clients stored with `llmgateway clients` are then
        counted in each process)."""
        if not _wanted(settings):
            return None
        conf = settings.limits
        outage = Outage(conf.retry_unreachable_sec, clock)
        chosen = backend_of(settings)
        backend: Backend
        if chosen is LimitsBackend.REDIS:
            from llmgateway.limits.redis_backend import RedisBackend

            backend = RedisBackend(conf, outage)
            description = f"redis at {masked_redis_url(conf.redis_url or '')}"
        elif chosen is LimitsBackend.POSTGRES:
            from llmgateway.limits.fleet import PostgresBackend, namespace_of

            interval = settings.gateway.refresh_interval_sec
            database = settings.database
            backend = PostgresBackend(
                database.async_url,
                namespace_of(conf.key_prefix),
                interval,
                max(conf.lease_ttl_sec, 3 * interval),
                outage,
                clock,
                database.direct_async_url,
                database.pooler,
            )
            description = "postgres (each gateway counts its share of each limit)"
        else:
            backend = LocalBackend(outage)
            description = "local (this process only)"
        return cls(backend, metrics, clock, description)

    def limiter(self, provider: str, limits: KeyLimits) -> KeyLimiter | None:
        """The limiter of `provider`, or None when it sets no limit."""
        if not limits.enabled:
            return None
        count = self.metrics.for_provider(provider).limiter_unavailable
        return KeyLimiter(provider, limits, self.backend, self.clock, count)

    async def start(self) -> None:
        """Say which backend counts, and connect it (a failure only fails open, later)."""
        log.info("per-key limits counted by %s", self.description)
        await self.backend.start()

    async def run(self) -> None:
        """The backend's background work (lease renewal, fleet membership)."""
        await self.backend.run()

    async def close(self) -> None:
        """Disconnect the backend."""
        await self.backend.close()


def _wanted(settings: Settings) -> bool:
    """Whether `settings` need a limits backend (see `Limits.create`)."""
    if settings.limits.backend is not LimitsBackend.AUTO:
        return True
    tokens = settings.gateway.tokens
    if any(t.rpm is not None or t.max_parallel is not None or t.tpm is not None for t in tokens):
        return True
    providers = settings.providers.values()
    return any(p.enabled and p.gateway_policy.key_limits.enabled for p in providers)


def masked_redis_url(url: str) -> str:
    """`url` fit for a log line: its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
