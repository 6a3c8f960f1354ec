"""How long an upstream asked to wait, from its headers or its error body."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping


def retry_after_of(
    headers: Mapping[str, str], body: bytes, now: float | None = None
) -> float | None:
    """The wait in seconds an upstream asked for, or None when it named none (or nonsense).

    Sources, first valid wins: `retry-after-ms`, `Retry-After` (seconds, or an HTTP date when
    `now` is given), OpenAI's `x-ratelimit-reset-requests`/`-tokens`, Gemini's body `retryDelay`.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    for seconds in (
        _number(lowered.get("retry-after-ms"), 0.001),
        _retry_after_header(lowered.get("retry-after"), now),
        _ratelimit_reset(lowered),
        _retry_delay(body),
    ):
        if seconds is not None:
            return seconds
    return None


def _number(text: str | None, scale: float = 1.0) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip()) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _retry_after_header(text: str | None, now: float | None) -> float | None:
    seconds = _number(text)
    if seconds is not None or text is None or now is None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) in seconds, or None."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _ratelimit_reset(lowered: Mapping[str, str]) -> float | None:
    # The limit that ran out (remaining 0) decides; if none is known to have, the soonest reset.
    exhausted: list[float] = []
    resets: list[float] = []
    for kind in ("requests", "tokens"):
        text = lowered.get(f"x-ratelimit-reset-{kind}")
        seconds = None if text is None else parse_duration(text)
        if seconds is None:
            continue
        resets.append(seconds)
        if lowered.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            exhausted.append(seconds)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')


def _retry_delay(body: bytes) -> float | None:
    found = _RETRY_DELAY.search(body)
    return None if found is None else float(found.group(1))
