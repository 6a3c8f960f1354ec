"""SOCKS5 egress: the aiohttp connector of a `socks5://` or `socks5h://` proxy, and its failures.

A SOCKS proxy is not an HTTP proxy that aiohttp could be told about per request: the handshake
happens under the connection, so each SOCKS proxy gets a session whose connector opens every
connection through it (aiohttp-socks, on python-socks). `socks5://` resolves the upstream's host
name here and hands the proxy an address; `socks5h://` hands it the name, for the proxy to
resolve (DNS from the proxy's side, as `curl` reads the same schemes). `user:pass@` in the URL
(percent-encoded where needed) is the RFC 1929 login.

Everything that fails before the proxy has opened the tunnel (the proxy unreachable, silent past
the connect timeout, refusing the login or the target, or answering something that is not
SOCKS5) is raised as `SocksError`, an `http1.ConnectError`: an egress fault, never the key's,
with a message of our own words that never holds the URL, its user or its password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from llmgateway.transport import http1

if TYPE_CHECKING:  # both load with the first SOCKS session
    import aiohttp

SOCKS_SCHEMES = ("socks5", "socks5h")
"""The proxy URL schemes carried by SOCKS5 (`socks5h`: the proxy resolves host names)."""


class SocksError(http1.ConnectError):
    """The SOCKS proxy did not open the tunnel: unreachable, refused, or not speaking SOCKS5.

    Its `strerror` is the message (so a probe's short description shows it); it never holds
    the proxy's URL or credentials."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message


class SocksTimeout(SocksError, TimeoutError):
    """The SOCKS proxy did not open the tunnel within the connect timeout."""


@dataclass(frozen=True, slots=True)
class SocksProxy:
    """A SOCKS5 proxy as a URL names it (the password is left out of repr)."""

    host: str
    port: int
    remote_dns: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_socks(url: str) -> bool:
    """Whether the proxy URL `url` names a SOCKS5 proxy."""
    return url.partition("://")[0].lower() in SOCKS_SCHEMES


def parse_socks(url: str) -> SocksProxy:
    """The proxy `url` names (a `socks5://` or `socks5h://` URL, default port 1080). Raises
    `SocksError` for one without a host or with a bad port, naming neither."""
    try:
        parts = urlsplit(url)
        port = parts.port or 1080
    except ValueError:
        raise SocksError("the SOCKS proxy URL has an invalid port") from None
    if not parts.hostname or parts.scheme.lower() not in SOCKS_SCHEMES:
        raise SocksError("the SOCKS proxy URL has no host")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""  # RFC 1929 allows an empty password; a user alone means one
    return SocksProxy(
        host=parts.hostname,
        port=port,
        remote_dns=parts.scheme.lower() == "socks5h",
        username=username,
        password=password,
    )


def socks_connector(url: str, limits: http1.Limits) -> aiohttp.TCPConnector:
    """An aiohttp connector opening every connection through the SOCKS5 proxy `url`, with the
    same pool limits as the HTTP proxies' connectors."""
    from aiohttp_socks import ProxyConnector, ProxyType

    proxy = parse_socks(url)
    return ProxyConnector(
        proxy_type=ProxyType.SOCKS5,
        host=proxy.host,
        port=proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.remote_dns,
        limit=limits.total,
        limit_per_host=limits.per_origin,
        keepalive_timeout=limits.keepalive_sec,
    )


def socks_failure(error: BaseException) -> SocksError | None:
    """`error`, raised while opening a connection through a SOCKS proxy, as a `SocksError`;
    None when it is no failure of the proxy's (aiohttp's own errors keep their meaning)."""
    import aiohttp_socks

    if isinstance(error, aiohttp_socks.ProxyTimeoutError):
        return SocksTimeout("the SOCKS proxy did not answer within the connect timeout")
    if isinstance(error, aiohttp_socks.ProxyConnectionError):
        return SocksError(_unreachable(error))
    if isinstance(error, aiohttp_socks.ProxyError):
        return SocksError(f"the SOCKS proxy refused: {_reply(error)}")
    if isinstance(error, AssertionError):
        # python-socks asserts a login exists when the proxy demands one the URL does not give
        return SocksError("the SOCKS proxy asks for a user and password the proxy URL lacks")
    return None


def _unreachable(error: BaseException) -> str:
    """The operating system's reason, from the innermost error (python-socks' own message
    names the proxy's address)."""
    reason = None
    cause = error.__cause__
    while cause is not None:
        reason = getattr(cause, "strerror", None) or reason
        cause = cause.__cause__
    if reason is not None and "proxy" in reason.lower():
        reason = None
    return "cannot connect to the SOCKS proxy" + (f" ({reason})" if reason else "")


def _reply(error: BaseException) -> str:
    """python-socks' words for a refusal (fixed texts and reply codes: no URL, no secret),
    cut short."""
    text = " ".join(str(error).split())[:120]
    return text or "no reason given"
