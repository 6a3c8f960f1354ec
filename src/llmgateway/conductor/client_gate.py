"""The clients of one gateway process (`llmgateway clients`, and `gateway.tokens` entries with
rules): who they are, and the gate a client's request passes before it is read.

The stored clients are looked up by the SHA-256 of the token (`by_digest`, swapped whole at
each pool refresh: the request path never reads the store). The gate refuses, in the
client's API shape, a token past its expiry (401), a request from outside its address
ranges (403) and one over its `rpm` or `max_parallel` (429 with `Retry-After` and the
client's own `x-ratelimit-*-requests` headers); a request let through holds a `Hold`,
given back in the caller's `finally` whatever happens (an answer, an error, a cancellation).
Limits are counted in this process (`limits.counts.LocalCounts`): with N gateways a client
may get up to N times its limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.types import Scope

from llmgateway.conductor.admission import Refused
from llmgateway.core.clients import ClientRules, Network
from llmgateway.core.routes import Grants
from llmgateway.limits.counts import WINDOW_SEC, LocalCounts
from llmgateway.observe.access import client_address

EXPIRED = Refused(401, "invalid_api_key", "This client token has expired.")
ELSEWHERE = Refused(
    403, "permission_denied", "This client token may not be used from this network address."
)


class Hold:
    """One request counted against its client's limits until given back."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass(slots=True)
class Clients:
    """The stored clients by token digest, and every client's counts in this process (the
    counts outlive refreshes and config reloads: a client is counted by its name)."""

    by_digest: Mapping[bytes, Grants] = field(default_factory=dict)
    counts: LocalCounts = field(default_factory=LocalCounts)
    clock: Callable[[], float] = time.time

    def admit(
        self, rules: ClientRules, scope: Scope, trusted: tuple[Network, ...]
    ) -> Refused | Hold | None:
        """The gate: a refusal, a `Hold` to give back (`release`), or None (nothing counted)."""
        now = self.clock()
        if rules.expired(now):
            return EXPIRED
        if rules.allow_ips and not rules.admits(client_address(scope, trusted)):
            return ELSEWHERE
        if not rules.limited:
            return None
        hold = Hold(rules.name)
        refusal = self.counts.take(rules.name, hold, rules.max_parallel, rules.rpm, now)
        if refusal is None:
            return hold
        if refusal.reason == "busy":
            message = f"Too many requests in flight for this client (at most {rules.max_parallel})."
        else:
            message = f"Too many requests for this client (at most {rules.rpm} a minute)."
        headers = self._headers(rules, now, refusal.retry_after)
        return Refused(
            429, "rate_limit_exceeded", message, retry_after=refusal.retry_after, headers=headers
        )

    def release(self, hold: Hold) -> None:
        """The request held as `hold` ended."""
        self.counts.give_back(hold)

    def _headers(
        self, rules: ClientRules, now: float, retry_after: float
    ) -> tuple[tuple[str, str], ...]:
        """The client's own `x-ratelimit-*-requests` headers (never an upstream key's)."""
        if rules.rpm is None:
            return ()
        used = self.counts.recent(rules.name, now)
        reset = min(retry_after, WINDOW_SEC)
        return (
            ("x-ratelimit-limit-requests", str(rules.rpm)),
            ("x-ratelimit-remaining-requests", str(max(0, rules.rpm - used))),
            ("x-ratelimit-reset-requests", f"{max(reset, 0.001):.3f}s"),
        )
