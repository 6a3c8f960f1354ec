"""The clients of one gateway process (`llmgateway clients`, and `gateway.tokens` entries with
rules): who they are, and the gate a client's request passes before it is read.

The stored clients are looked up by the SHA-256 of the token (`by_digest`, swapped whole at
each pool refresh: the request path never reads the store). The gate refuses, in the
client's API shape, a token past its expiry (401), a request from outside its address
ranges (403), one whose token quota is spent (429 `insufficient_quota`, `conductor.quotas`)
and one over its `rpm` or `max_parallel` (429 with `Retry-After` and the client's own
`x-ratelimit-*-requests` headers); a request let through holds a `Hold`,
given back in the caller's `finally` whatever happens (an answer, an error, a cancellation).

A client with a `tpm` reserves tokens once its body is read (`reserve`: the estimate of
`limits.reservation`); over its `tpm` it gets 429 with its own `x-ratelimit-*-tokens` headers.
The reservation is replaced by the answer's real usage (`spent`), or by 0 when no answer came.

Limits are counted by the per-key limits backend when the process has one (`limits.backend`:
Redis exact across gateways, PostgreSQL each gateway its share, failing open as for keys),
else in this process (`limits.counts.LocalCounts`): with N gateways a client may then get up
to N times its limits.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import Scope

from llmgateway.conductor.admission import Refused
from llmgateway.conductor.quotas import Quotas
from llmgateway.config.settings import KeyLimits
from llmgateway.core.clients import ClientRules, Network
from llmgateway.core.routes import Grants
from llmgateway.limits.counts import WINDOW_SEC, LocalCounts, Refusal
from llmgateway.limits.outage import Unreachable
from llmgateway.limits.reservation import reservation
from llmgateway.observe.access import client_address

if TYPE_CHECKING:
    from llmgateway.limits import Backend

EXPIRED = Refused(401, "invalid_api_key", "This client token has expired.")
ELSEWHERE = Refused(
    403, "permission_denied", "This client token may not be used from this network address."
)


class Hold:
    """One request counted against its client's limits until given back: `slot` names the
    client in the backend (`client:<name>`), `token` the request."""

    __slots__ = ("slot", "token")

    def __init__(self, slot: str, token: int) -> None:
        self.slot = slot
        self.token = token


class Spend:
    """The tokens one request reserved against its client's `tpm` until its usage is known:
    `slot` names the client in the backend, `token` the request, `amount` the reservation."""

    __slots__ = ("amount", "slot", "token")

    def __init__(self, slot: str, token: int, amount: int) -> None:
        self.slot = slot
        self.token = token
        self.amount = amount


@functools.lru_cache(maxsize=256)
def _limits(max_parallel: int | None, rpm: int | None) -> KeyLimits:
    return KeyLimits(max_concurrent=max_parallel, rpm=rpm)


@dataclass(slots=True)
class Clients:
    """The stored clients by token digest, and every client's counts in this process (the
    counts outlive refreshes and config reloads: a client is counted by its name)."""

    by_digest: Mapping[bytes, Grants] = field(default_factory=dict)
    counts: LocalCounts = field(default_factory=LocalCounts)
    clock: Callable[[], float] = time.time
    backend: Backend | None = None  # the per-key limits backend, when the process has one
    quotas: Quotas = field(default_factory=Quotas)  # the token quotas' spends
    _tokens: Iterator[int] = field(default_factory=itertools.count)

    async def admit(
        self, rules: ClientRules, scope: Scope, trusted: tuple[Network, ...]
    ) -> Refused | Hold | None:
        """The gate: a refusal, a `Hold` to give back (`release`), or None (nothing counted:
        no limits, or a limits backend out of reach, which fails open)."""
        now = self.clock()
        if rules.expired(now):
            return EXPIRED
        if rules.allow_ips and not rules.admits(client_address(scope, trusted)):
            return ELSEWHERE
        if rules.quota_tokens is not None:
            spent = self.quotas.refusal(rules, now)
            if spent is not None:
                return spent
        if not rules.limited:
            return None
        hold = Hold(f"client:{rules.name}", next(self._tokens))
        refusal = await self._take(hold, rules, now)
        if refusal is None:
            return hold
        if isinstance(refusal, _Open):
            return None
        if refusal.reason == "busy":
            message = f"Too many requests in flight for this client (at most {rules.max_parallel})."
        else:
            message = f"Too many requests for this client (at most {rules.rpm} a minute)."
        return self._refused(rules, refusal, message, now)

    async def reserve(self, rules: ClientRules, body: bytes) -> Refused | Spend | None:
        """Reserve the tokens of a request with `body` against the client's `tpm` (which it
        has): a refusal, a `Spend` to settle (`spent`), or None (the limits backend is out of
        reach: fails open)."""
        tpm = rules.tpm
        assert tpm is not None
        now = self.clock()
        spend = Spend(f"client:{rules.name}", next(self._tokens), reservation(body))
        slot = (spend.slot, 0, "")
        refusal = await self._counted(
            lambda counts: counts.reserve(slot, spend.token, tpm, spend.amount, now),
            lambda backend: backend.reserve(slot, spend.token, tpm, spend.amount, now),
            now,
        )
        if isinstance(refusal, _Open):
            return None
        if refusal is None:
            return spend
        message = f"Too many tokens for this client (at most {tpm} a minute)."
        return self._refused(rules, refusal, message, now)

    def spent(self, spend: Spend, used: int | None) -> None:
        """The request that reserved `spend` used `used` tokens (0: no answer came; None:
        its usage is unknown, and the reservation stands)."""
        if self.backend is None:
            self.counts.spent(spend.token, used)
        else:
            self.backend.spent((spend.slot, 0, ""), spend.token, used)

    def _refused(self, rules: ClientRules, refusal: Refusal, message: str, now: float) -> Refused:
        headers = self._headers(rules, refusal, now)
        return Refused(
            429, "rate_limit_exceeded", message, retry_after=refusal.retry_after, headers=headers
        )

    async def _take(self, hold: Hold, rules: ClientRules, now: float) -> Refusal | _Open | None:
        slot = (hold.slot, 0, "")
        most, rpm = rules.max_parallel, rules.rpm
        return await self._counted(
            lambda counts: counts.take(slot, hold.token, most, rpm, now),
            lambda backend: backend.take(slot, hold.token, _limits(most, rpm), now),
            now,
        )

    async def _counted(
        self,
        here: Callable[[LocalCounts], Refusal | None],
        there: Callable[[Backend], Awaitable[Refusal | None]],
        now: float,
    ) -> Refusal | _Open | None:
        """Count a request in this process (`here`) or with the limits backend (`there`); a
        backend out of reach (or known down) fails open: `OPEN`, counted as its outage."""
        backend = self.backend
        if backend is None:
            return here(self.counts)
        if backend.outage.down(now):
            return OPEN
        try:
            return await there(backend)
        except Unreachable as error:
            backend.outage.failed(backend.name, error)
            return OPEN

    def release(self, hold: Hold) -> None:
        """The request held as `hold` ended."""
        if self.backend is None:
            self.counts.give_back(hold.token)
        else:
            self.backend.give_back(hold.slot, hold.token)

    def inflight(self, name: str) -> int | None:
        """Client `name`'s requests in flight, where this process counts them all (no backend,
        or the `local` one); else None."""
        counts = self._exact()
        return None if counts is None else counts.inflight((f"client:{name}", 0, ""))

    def tokens(self, name: str) -> int | None:
        """Client `name`'s tokens in the last minute (reserved, or spent once settled), where
        this process counts them all (no backend, or the `local` one); else None."""
        counts = self._exact()
        return None if counts is None else counts.tokens((f"client:{name}", 0, ""), self.clock())

    def unsettled(self) -> int | None:
        """Token reservations of requests not over yet (every client's), where this process
        counts them all; else None."""
        counts = self._exact()
        return None if counts is None else counts.unsettled()

    def _exact(self) -> LocalCounts | None:
        """The counts when this process holds every one of them."""
        backend = self.backend
        if backend is None:
            return self.counts
        local: LocalCounts | None = getattr(backend, "counts", None)
        return local if backend.name == "local" else None

    def _headers(
        self, rules: ClientRules, refusal: Refusal, now: float
    ) -> tuple[tuple[str, str], ...]:
        """The client's own `x-ratelimit-*` headers for the limit that refused (never an
        upstream key's): `-tokens` for its `tpm`, else `-requests` for its `rpm` (none for
        `max_parallel` alone); the remaining count only where it is known (counted here, or
        the limit spent)."""
        tokens = refusal.reason == "tokens"
        limit = rules.tpm if tokens else rules.rpm
        if limit is None:
            return ()
        slot = (f"client:{rules.name}", 0, "")
        counts = self._exact()
        remaining: int | None = None
        if counts is not None:
            used = counts.tokens(slot, now) if tokens else counts.recent(slot, now)
            remaining = max(0, limit - used)
        elif refusal.reason != "busy":
            remaining = 0
        return ratelimit_headers("tokens" if tokens else "requests", limit, remaining, refusal)


def ratelimit_headers(
    unit: str, limit: int, remaining: int | None, refusal: Refusal
) -> tuple[tuple[str, str], ...]:
    """`x-ratelimit-{limit,remaining,reset}-<unit>` (`requests` or `tokens`) of a limit of
    `limit` a minute that gave `refusal` (`remaining` None: not known, left out)."""
    reset = min(refusal.retry_after, WINDOW_SEC) if refusal.reason != "busy" else 1.0
    headers = [
        (f"x-ratelimit-limit-{unit}", str(limit)),
        (f"x-ratelimit-reset-{unit}", f"{max(reset, 0.001):.3f}s"),
    ]
    if remaining is not None:
        headers.append((f"x-ratelimit-remaining-{unit}", str(remaining)))
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class _Open:
    """The limits backend is out of reach: the request goes on uncounted (fails open)."""

    why: str = "unreachable"


OPEN = _Open()
"""The one `_Open`."""
