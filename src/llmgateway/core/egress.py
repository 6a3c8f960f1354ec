"""Which way a key's traffic leaves: direct, the provider's static proxy, or its stealth proxy.

In `stealth` mode each key is bound to one healthy proxy of its provider's pool by rendezvous
(highest-random-weight) hashing: every (key, proxy) pair gets a stable score and the key uses
its best-scoring healthy proxy. So a key always appears from the same IP, and when a proxy dies
only the keys bound to it move (each to its second choice); the others stay where they were.
The gateway and the Keeper call the same function, so probes and traffic share the egress.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import unquote, urlsplit

DIRECT = "direct"
"""The egress of traffic that leaves through no proxy."""

SOCKS_SCHEMES = ("socks5", "socks5h")
"""The proxy URL schemes carried by SOCKS5 (`socks5h`: the proxy resolves host names)."""

_SOCKS_FIELD_MAX = 255  # RFC 1929: a user and a password of 1 to 255 bytes each


class ProxyMode(enum.StrEnum):
    """How a provider's traffic leaves: directly, through one static proxy, or bound per key to
    a proxy of a pool (stealth)."""

    NONE = "none"
    STATIC = "static"
    STEALTH = "stealth"


class ProxyChoice(Protocol):
    """A provider's proxy settings, as far as choosing an egress goes
    (`config.settings.ProxyConfig` is one)."""

    @property
    def mode(self) -> ProxyMode: ...
    @property
    def static_url(self) -> str | None: ...


class Proxied(Protocol):
    """A provider with proxy settings (`config.settings.ProviderSettings` is one)."""

    @property
    def proxy_config(self) -> ProxyChoice: ...


class EgressError(Exception):
    """A fault on our own side of the wire, raised by our own code.

    For example: the configured proxy is unavailable. An exchange that raised it is an
    `EGRESS_ERROR`, which is never blamed on the key.
    """


class NoHealthyProxyError(EgressError):
    """A stealth provider has no healthy proxy: its traffic must not leave directly."""


def egress_for(provider: Proxied, key: str | int, healthy_proxies: Iterable[str]) -> str:
    """The egress id (`"direct"` or a proxy URL) for one key of `provider`.

    `key` identifies the key: both sides must pass the same kind (llmgateway passes the
    secret, which stays stable when a store is rebuilt; it is only hashed). `healthy_proxies`
    are the URLs of the provider's live proxies (used in `stealth` mode only). Raises
    `NoHealthyProxyError` in `stealth` mode when there is none.
    """
    config = provider.proxy_config
    if config.mode is ProxyMode.STATIC and config.static_url:
        return config.static_url
    if config.mode is not ProxyMode.STEALTH:
        return DIRECT
    best = max(healthy_proxies, key=lambda url: _score(str(key), url), default=None)
    if best is None:
        raise NoHealthyProxyError(
            "no healthy proxy in the stealth pool; add proxies to pool_list_path "
            "or wait for the Keeper to find one alive"
        )
    return best


def _score(key: str, proxy: str) -> bytes:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(key.encode())
    digest.update(b"\0")
    digest.update(proxy.encode())
    return digest.digest()


def socks_login_problem(url: str) -> str | None:
    """Why the login of the SOCKS5 proxy `url` cannot be sent, or None (also for a URL that
    is not SOCKS5's or has no login). RFC 1929 carries a user and a password of at most 255
    bytes, and the handshake sends them as ASCII; the message names neither."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in SOCKS_SCHEMES:
        return None
    for text in (parts.username, parts.password):
        value = unquote(text or "")
        if not value.isascii() or len(value) > _SOCKS_FIELD_MAX:
            return "its SOCKS5 user and password must be ASCII, at most 255 characters each"
    return None
