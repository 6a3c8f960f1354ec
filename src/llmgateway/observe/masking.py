"""Showing secrets without revealing them."""

from __future__ import annotations

import hashlib

MASKED_MIN = 12
"""The shortest secret `mask` shows a part of; shorter ones are masked whole."""


def mask(secret: str) -> str:
    """`sk-proj-abcdef…a1b2` → `sk-…a1b2`: a short prefix up to the first dash, and the last four.

    Short strings are masked whole, so nothing useful leaks from them either.
    """
    if len(secret) < MASKED_MIN:
        return "…" * bool(secret)
    head = secret[: secret.index("-") + 1] if "-" in secret[:8] else secret[:2]
    return f"{head}…{secret[-4:]}"


def suffix(secret: str) -> str | None:
    """The last four characters `mask` shows of `secret` (None when it shows none)."""
    return secret[-4:] if len(secret) >= MASKED_MIN else None


FINGERPRINT_DIGITS = 12
"""Hex digits of a fingerprint: 48 bits, so 100,000 keys share one by chance with odds of about
1 in 56,000 (8 digits gave about 1 in 1)."""


def digest(secret: str) -> str:
    """The SHA-256 of a key as 64 hex digits: the store keeps it, so a key can be found by its
    fingerprint (any prefix of this) without reading every key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def fingerprint(secret: str) -> str:
    """A stable, non-reversible id for a key (the first 12 hex digits of its SHA-256), safe for
    logs; `llmgateway keys show FINGERPRINT` finds the key's file and line from it."""
    return digest(secret)[:FINGERPRINT_DIGITS]


def shown_proxy(url: str) -> str:
    """A proxy URL fit for a page or a log line: its user and password hidden
    (`http://user:pass@10.0.0.1:3128` → `http://***@10.0.0.1:3128`), the rest as written; a URL
    that does not parse is masked whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return mask(url)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"
