"""SOCKS5 egress: reading a `socks5://` or `socks5h://` proxy URL, and the proxy's failures.

A SOCKS proxy is not an HTTP proxy that aiohttp could be told about per request: the handshake
happens under the connection, so each SOCKS proxy gets a session whose connector opens every
connection through it (`transport.socks_connector`: aiohttp-socks, on python-socks).
`socks5://` resolves the upstream's host name here and hands the proxy an address; `socks5h://`
hands it the name, for the proxy to resolve (DNS from the proxy's side, as `curl` reads the
same schemes). `user:pass@` in the URL (percent-encoded where needed) is the RFC 1929 login,
offered only when both are given.

Everything that fails before the proxy has opened the tunnel (the proxy unreachable, silent past
the connect timeout, refusing the login or the target, or answering something that is not
SOCKS5) is raised as `SocksError`, an `http1.ConnectError`: an egress fault, never the key's,
with a message of our own words that never holds the URL, its user or its password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from llmgateway.core.egress import SOCKS_SCHEMES, socks_login_problem
from llmgateway.transport import http1


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
    `SocksError` for one without a host, with a bad port or a login SOCKS5 cannot carry,
    naming none of them."""
    try:
        parts = urlsplit(url)
        port = parts.port or 1080
    except ValueError:
        raise SocksError("the SOCKS proxy URL has an invalid port") from None
    if not parts.hostname or parts.scheme.lower() not in SOCKS_SCHEMES:
        raise SocksError("the SOCKS proxy URL has no host")
    problem = socks_login_problem(url)
    if problem is not None:
        raise SocksError(f"the SOCKS proxy URL cannot be used: {problem}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return SocksProxy(
        host=parts.hostname,
        port=port,
        remote_dns=parts.scheme.lower() == "socks5h",
        username=username,
        password=password,
    )


def socks_failure(error: BaseException) -> SocksError:
    """`error`, raised while a tunnel through a SOCKS proxy was being opened (aiohttp-socks'
    errors, or anything else its handshake let through, such as a reset), as a `SocksError`
    in our own words."""
    import aiohttp_socks

    if isinstance(error, aiohttp_socks.ProxyTimeoutError):
        return SocksTimeout("the SOCKS proxy did not answer within the connect timeout")
    if isinstance(error, aiohttp_socks.ProxyConnectionError):
        return SocksError(_unreachable(error))
    if isinstance(error, aiohttp_socks.ProxyError):
        return SocksError(f"the SOCKS proxy refused: {_reply(error)}")
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None)
        kind = type(error).__name__ + (f": {reason}" if reason else "")
        return SocksError(f"TLS with the upstream through the SOCKS proxy failed ({kind})")
    return SocksError(f"the SOCKS handshake failed ({type(error).__name__})")


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
