"""Sending the Keeper's probes: one HTTP exchange with a key (or through a proxy), classified.

Probes go through the gateway's own `Upstream` sessions, egress by egress, and every exchange goes
through the one `classify_exchange()` with `probe=True`. Nothing here decides what a result means
for a key; that is `llmgateway.keeper.probes`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from llmgateway.config.settings import ProviderSettings, Timeouts
from llmgateway.core.outcomes import Outcome
from llmgateway.observe.masking import mask
from llmgateway.providers import ProbeRequest, auth_probe_request
from llmgateway.transport.errors import classify_exchange
from llmgateway.transport.upstream import Upstream

BODY_PREFIX = 64 * 1024
"""Bytes of an answer read for classifying it; the rest is discarded."""
MESSAGE_CHARS = 200
"""Characters of an upstream error body kept as the row's (masked) error message."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One probe's result: what it meant, how long it took, and a masked short message."""

    outcome: Outcome
    latency_ms: float
    error_message: str | None


async def send(
    upstream: Upstream,
    provider: ProviderSettings,
    request: ProbeRequest,
    egress: str,
    secret: str,
    now: float,
) -> Exchange:
    """Send one probe via `egress` and classify the answer (`now` reads an HTTP-date
    Retry-After). Never raises except on cancellation; `secret` is masked in the message."""
    started = time.perf_counter()
    try:
        status, headers, body = await _exchange(upstream, provider, request, egress, None)
    except Exception as exc:  # every failure is an outcome; cancellation is not an Exception
        outcome = classify_exchange(provider, None, {}, b"", exc, probe=True, now=now)
        return Exchange(outcome, _elapsed_ms(started), describe_exception(exc))
    outcome = classify_exchange(provider, status, headers, body, None, probe=True, now=now)
    message = None if outcome.ok else _body_message(status, body, secret)
    return Exchange(outcome, _elapsed_ms(started), message)


async def fetch(
    upstream: Upstream, provider: ProviderSettings, request: ProbeRequest, egress: str, limit: int
) -> tuple[int, bytes]:
    """Send one request via `egress` like a probe and read its whole answer: (status, body).
    Raises what the exchange raised (an OSError, TimeoutError, `http1.ResponseTooLarge` past
    `limit` bytes…)."""
    status, _, body = await _exchange(upstream, provider, request, egress, limit)
    return status, body


async def _exchange(
    upstream: Upstream,
    provider: ProviderSettings,
    request: ProbeRequest,
    egress: str,
    limit: int | None,
) -> tuple[int, dict[str, str], bytes]:
    """One request within the provider's timeouts: the status, headers and body (the whole
    body up to `limit` bytes, or with None its first `BODY_PREFIX` bytes)."""
    async with asyncio.timeout(_deadline(provider.timeouts)):
        response = await upstream.request(
            egress,
            request.method,
            request.url,
            request.headers,
            request.body,
            provider.timeouts,
        )
        try:
            if limit is None:
                body = await response.read_prefix(BODY_PREFIX)
            else:
                body = await response.read(limit)
            return response.status, dict(response.headers), body
        finally:
            response.close()


async def proxy_alive(
    upstream: Upstream, provider: ProviderSettings, proxy_url: str
) -> tuple[bool, str | None]:
    """Whether the provider's models URL answers through `proxy_url` (any HTTP status counts:
    the probe carries no key). Returns (alive, masked reason when dead)."""
    url = auth_probe_request(provider, "").url
    try:
        async with asyncio.timeout(_deadline(provider.timeouts)):
            response = await upstream.request(proxy_url, "GET", url, {}, b"", provider.timeouts)
            try:
                await response.read_prefix(BODY_PREFIX)
            finally:
                response.close()
    except Exception as exc:  # any failure to get an answer means the proxy is not usable
        return False, describe_exception(exc)
    return True, None


def describe_exception(exc: BaseException) -> str:
    """A short message for a failed exchange: the exception's kind and OS reason only, since
    the text of network errors can carry URLs with credentials."""
    reason = getattr(exc, "strerror", None) or getattr(
        getattr(exc, "os_error", None), "strerror", None
    )
    return type(exc).__name__ + (f": {reason}" if reason else "")


def _body_message(status: int, body: bytes, secret: str) -> str:
    text = body[: MESSAGE_CHARS * 4].decode("utf-8", errors="replace")
    if secret:
        text = text.replace(secret, mask(secret))
    text = " ".join(text.split())[:MESSAGE_CHARS]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _deadline(timeouts: Timeouts) -> float:
    return timeouts.pool + timeouts.connect + timeouts.write + timeouts.read


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
