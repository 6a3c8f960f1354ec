"""Debug modes (`gateway_policy.debug_mode`): log each upstream exchange, secrets scrubbed.

- `disabled`: nothing (the default).
- `headers_only`: per attempt, the request line and headers sent upstream, and the status and
  headers that came back.
- `full_body`: the same plus the request body and the response body (the first
  `BODY_LIMIT` bytes; a streamed body is logged when it ends, without delaying any chunk).

Credentials are never logged: auth headers and cookies are masked, `key=` in a URL is masked,
and the key of the attempt is replaced by its masked form wherever it appears in a body. The
lines go to the `llmgateway.debug` logger at INFO (so no log-level change is needed) and carry
the request's context (request id, provider, key fingerprint, attempt) like every other line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping

from llmgateway.config.settings import DebugMode
from llmgateway.observe.masking import mask

BODY_LIMIT = 16 * 1024
"""Bytes of a body written to the log; the rest is counted, not shown."""
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-goog-api-key",
        "api-key",
        "x-api-key",
        "cookie",
        "set-cookie",
    }
)

log = logging.getLogger("llmgateway.debug")
_URL_KEY = re.compile(r"([?&]key=)([^&#]*)", re.IGNORECASE)


def scrub_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers with every credential masked (`Bearer sk-…a1b2`)."""
    out = {}
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS:
            scheme, sep, rest = value.partition(" ")
            value = f"{scheme} {mask(rest)}" if sep and scheme.isalpha() else mask(value)
        out[name] = value
    return out


def scrub_url(url: str) -> str:
    """The URL with a `key=` query parameter masked."""
    return _URL_KEY.sub(lambda m: m.group(1) + mask(m.group(2)), url)


def scrub_body(body: bytes, secret: str) -> str:
    """The start of `body` as text, with `secret` masked wherever it appears."""
    text = body[:BODY_LIMIT].decode("utf-8", errors="replace")
    if secret:
        text = text.replace(secret, mask(secret))
    if len(body) > BODY_LIMIT:
        text += f"… ({len(body) - BODY_LIMIT} more bytes)"
    return text


def request(
    mode: DebugMode,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
) -> None:
    """Log what is sent upstream (nothing when `mode` is disabled)."""
    if mode is DebugMode.DISABLED:
        return
    fields: dict[str, object] = {
        "method": method,
        "url": scrub_url(url),
        "headers": scrub_headers(headers),
    }
    if mode is DebugMode.FULL_BODY:
        fields["body"] = scrub_body(body, secret)
    log.info("upstream request", extra={"debug": fields})


def response(
    mode: DebugMode,
    status: int | None,
    headers: Mapping[str, str],
    body: bytes | None,
    secret: str,
) -> None:
    """Log what came back (`body` None: it is streamed and logged by `tee` when it ends)."""
    if mode is DebugMode.DISABLED:
        return
    fields: dict[str, object] = {"status": status, "headers": scrub_headers(headers)}
    if mode is DebugMode.FULL_BODY and body is not None:
        fields["body"] = scrub_body(body, secret)
    log.info("upstream response", extra={"debug": fields})


async def tee(chunks: AsyncIterator[bytes], secret: str) -> AsyncIterator[bytes]:
    """Pass `chunks` through unchanged and log the body once it ends (`full_body` mode)."""
    kept = bytearray()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if len(kept) < BODY_LIMIT:
                kept += chunk[: BODY_LIMIT - len(kept)]
            yield chunk
    finally:
        _log_body(bytes(kept), size, secret)


def whole_body(body: bytes, secret: str) -> None:
    """Log an answer read whole (`full_body` mode), scrubbed and cut at BODY_LIMIT."""
    _log_body(body[:BODY_LIMIT], len(body), secret)


def _log_body(kept: bytes, size: int, secret: str) -> None:
    text = scrub_body(kept, secret)
    if size > BODY_LIMIT:
        text += f"… ({size - BODY_LIMIT} more bytes)"
    log.info("upstream response body", extra={"debug": {"bytes": size, "body": text}})
