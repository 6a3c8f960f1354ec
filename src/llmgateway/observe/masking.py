"""Showing secrets without revealing them."""

from __future__ import annotations

import hashlib


def mask(secret: str) -> str:
    """`sk-proj-abcdef…a1b2` → `sk-…a1b2`: a short prefix up to the first dash, and the last four.

    Short strings are masked whole, so nothing useful leaks from them either.
    """
    if len(secret) < 12:
        return "…" * bool(secret)
    head = secret[: secret.index("-") + 1] if "-" in secret[:8] else secret[:2]
    return f"{head}…{secret[-4:]}"


def fingerprint(secret: str) -> str:
    """A stable, non-reversible id for a key (8 hex digits of its SHA-256), safe for logs."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]
