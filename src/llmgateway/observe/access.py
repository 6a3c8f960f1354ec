"""The request lines of the gateway's proxied routes: the `request done` line of every request
(`AccessLog`) and the refusals of requests without a valid gateway token (`TokenRefusals`).

`request done` carries the method, the path (never the query string, which may hold a `key=`),
the status, the duration, the client's address and the attempts; the request's context
(`request_id`, `provider`, `model`, `key` fingerprint, `attempt`, `outcome`) is merged in by
`observe.logs`. Nothing is computed for a line that is not written: a success costs one level
check when `logging.access` is off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmgateway.core.clients import Network
from llmgateway.observe.logs import bind_outcome
from llmgateway.observe.throttle import Throttle

_requests = logging.getLogger("llmgateway.request")
_refusals = logging.getLogger("llmgateway.auth")

PATH_SHOWN = 200
"""The longest path a line shows (longer ones are cut, marked with `…`)."""
TOKEN_REFUSAL_EVERY_SEC = 60.0
"""At most one line per this many seconds about refused gateway tokens, after the first."""

Reason = Literal["missing", "wrong"]


def shown_path(raw_path: bytes) -> str:
    """The request path as a line may show it: ASCII, control characters and other bytes
    escaped (`\\x1b`), cut at `PATH_SHOWN` characters."""
    text = raw_path.decode("ascii", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= PATH_SHOWN else text[: PATH_SHOWN - 1] + "…"


def client_address(scope: Mapping[str, Any], trusted: tuple[Network, ...] = ()) -> str:
    """The client's address: the connection's peer, or, when the peer is one of the `trusted`
    proxies (`gateway.trusted_proxies`), the right-most hop of `X-Forwarded-For` that is not
    a trusted proxy (a hop a client wrote itself further left is never believed). A hop that
    is not an IP address ends the walk at the last trusted hop."""
    client = scope.get("client")
    peer = str(client[0]) if client else "-"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers") or ():
        if name.lower() == b"x-forwarded-for":
            hops += value.decode("latin-1").split(",")
    address = peer
    for hop in reversed(hops):
        hop = hop.strip()
        if _ip(hop) is None:
            return address
        address = hop
        if not _trusted(hop, trusted):
            return hop
    return address


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in trusted)


@dataclass(frozen=True, slots=True)
class AccessLog:
    """Writes each request's `request done` line. With `enabled` (`logging.access`) every
    request gets one at INFO (WARNING for a 5xx); without, a success is at DEBUG and only
    client errors (INFO) and 5xx (WARNING) show at the default level."""

    enabled: bool = False
    trusted: tuple[Network, ...] = ()  # `gateway.trusted_proxies`: see `client_address`

    def done(
        self, scope: Mapping[str, Any], code: int, attempts: int, outcome: str, started: float
    ) -> None:
        """The line of a request answered `code` after `attempts` upstream attempts, ended
        with `outcome`, that arrived at `started` (`time.perf_counter()`)."""
        bind_outcome(outcome)
        if code >= 500:
            level = logging.WARNING
        elif code >= 400 or self.enabled:
            level = logging.INFO
        else:
            level = logging.DEBUG
        if _requests.isEnabledFor(level):
            elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
            fields = {
                "method": scope.get("method", "-"),
                "path": shown_path(scope.get("raw_path") or b""),
                "status": code,
                "duration_ms": elapsed_ms,
                "client": client_address(scope, self.trusted),
                "attempts": attempts,
            }
            _requests.log(level, "request done", extra=fields)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused request, as its line shows it: never the token, only how it was sent and
    its length."""

    client: str
    method: str
    path: str
    surface: str  # the API shape of the answer: openai, gemini or anthropic
    reason: Reason
    # bearer, x-goog-api-key, x-api-key, key-query, api-key, other-authorization or none
    sent_as: str
    token_length: int

    def fields(self) -> dict[str, object]:
        return {
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "surface": self.surface,
            "reason": self.reason,
            "sent_as": self.sent_as,
            "token_length": self.token_length,
        }


@dataclass(slots=True)
class TokenRefusals:
    """The 401s of one gateway process: each is counted (`count`, the metrics'
    `llmgateway_auth_failures_total`), the first is logged at INFO at once, and later ones at
    most once per `throttle.every_sec` in a summary line with their count (`Throttle`)."""

    count: Callable[[str, Reason], None]
    clock: Callable[[], float] = time.monotonic
    what: str = "gateway token"  # what was refused, as the lines name it
    throttle: Throttle = field(default_factory=lambda: Throttle(TOKEN_REFUSAL_EVERY_SEC))
    last: Refusal | None = None
    _timer: asyncio.TimerHandle | None = None

    def refused(self, refusal: Refusal) -> None:
        """Count and (maybe) log one refused request."""
        self.count(refusal.surface, refusal.reason)
        self.last = refusal
        earlier = self.throttle.offer(self.clock())
        if earlier is not None:
            fields = refusal.fields()
            if earlier:
                fields["not_logged_before"] = earlier
            _refusals.info("refused a request: %s %s", refusal.reason, self.what, extra=fields)
            return
        due = self.throttle.summary_due()
        if due is not None and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - self.clock()), self.summarize)

    def summarize(self) -> None:
        """Write the summary line of the refusals held back, if one is due (the timer's
        call; callable at any time)."""
        self._timer = None
        now = self.clock()
        held = self.throttle.summary(now)
        if held and self.last is not None:
            _refusals.info(
                "refused %d more request(s) without a valid %s in the last %g s",
                held,
                self.what,
                self.throttle.every_sec,
                extra={"count": held, "latest": self.last.fields()},
            )
        elif self.throttle.held:  # too early (a clock of its own): look again when due
            due = self.throttle.summary_due()
            if due is not None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(max(0.0, due - now), self.summarize)

    def close(self) -> None:
        """Cancel the pending summary (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
