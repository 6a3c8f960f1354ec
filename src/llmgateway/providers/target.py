"""The request target a client sent, checked before anything is built from it.

uvicorn hands the app a percent-*decoded* `path`; the upstream target is built only from the
client's raw, still-encoded `raw_path` and query string, and only when they hold nothing that
could change what the upstream sees: no control characters, spaces, `#` or `\\` (in the path
not even percent-encoded), dot-segments (plain or encoded), encoded `/`, an encoded `%` (double
encoding), or bytes outside RFC 3986. What passes
is forwarded byte for byte (`%3F` stays `%3F`), minus any `key`/`api_key` query parameter.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_plus

# RFC 3986 path: segments of pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
_PATH = re.compile(rb"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)+")
# RFC 3986 query: pchar / "/" / "?"
_QUERY = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
# what a path may not hold even encoded: a control character (%00-%1F, %7F: a decoding hop
# would end the request line there), a space or # (%20, %23), an encoded / or \ (%2F, %5C),
# and an encoded % (%25: double encoding, even spelt `%25%32%65`, which decodes to `%2e`)
_SMUGGLED = re.compile(rb"%(?:[01][0-9A-Fa-f]|2[035Ff]|5[Cc]|7[Ff])")
# a segment that is `.` or `..`, each dot plain or encoded (%2e)
_DOT_SEGMENT = re.compile(rb"/(?:\.|%2[Ee]){1,2}(?=/|$)")

KEY_PARAMETERS = frozenset({"key", "api_key"})
"""Query parameters that carry a credential: never forwarded, in any spelling or encoding."""


CACHED_PATH_BYTES = 256
"""Paths up to this long have their verdict cached (a few paths make up nearly all requests);
longer ones are checked every time, so a client sending many long paths cannot make the cache
hold megabytes."""


def checked_path(raw: bytes) -> str | None:
    """The raw path as text when it is safe to forward as it is, else None."""
    if len(raw) <= CACHED_PATH_BYTES:
        return _cached_check(raw)
    return _check(raw)


def _check(raw: bytes) -> str | None:
    if _PATH.fullmatch(raw) is None:
        return None
    if b"%" in raw and _SMUGGLED.search(raw) is not None:
        return None
    if (b"." in raw or b"%2" in raw) and _DOT_SEGMENT.search(raw) is not None:
        return None
    return raw.decode("ascii")


_cached_check = functools.lru_cache(maxsize=4096)(_check)  # at most ~1 MiB of short paths


def checked_query(raw: bytes) -> str | None:
    """The raw query string without its credential parameters, or None when it holds anything
    but RFC 3986 query characters. `""` when nothing is left to forward."""
    if not raw:
        return ""
    if _QUERY.fullmatch(raw) is None:
        return None
    text = raw.decode("ascii")
    kept = [part for part in text.split("&") if part and not _is_credential(part)]
    return "&".join(kept)


def _is_credential(part: str) -> bool:
    """Whether one `name=value` pair names a key. `;` is a separator too for some servers, so
    every `;`-piece is looked at; names are compared decoded and ignoring case."""
    for piece in part.split(";"):
        name = unquote_plus(piece.partition("=")[0]).strip().lower()
        if name in KEY_PARAMETERS:
            return True
    return False


def query_parameter(query: bytes, name: bytes) -> str | None:
    """The first value of a plain (unencoded) `name=` parameter, or None (for the gateway
    token sent as `?key=`)."""
    prefix = name + b"="
    for part in query.split(b"&"):
        if part.startswith(prefix):
            return part[len(prefix) :].decode("latin-1")
    return None
