"""Clients: the rules a gateway-wide token carries besides its reach (`core.routes.Grants`):
when it expires, where it may come from, and its limits; and the shape of the secrets
`llmgateway clients create` issues.

A client's secret is `sk-lgw_<random>_<check>`: `random` is 43 base62 characters (256 bits),
`check` the CRC32 of `random` in 6 base62 characters, so that a scanner can tell a real
token's shape offline. Only the SHA-256 of a secret is stored. Pure: the time is passed in.
"""

from __future__ import annotations

import calendar
import enum
import ipaddress
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime

TOKEN_PREFIX = "sk-lgw_"
"""What every client secret starts with."""

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_CHARS = 43  # 62**43 > 2**256
_CHECK_CHARS = 6  # 62**6 > 2**32
_SHAPE = re.compile(rf"{TOKEN_PREFIX}([0-9A-Za-z]{{{_RANDOM_CHARS}}})_([0-9A-Za-z]{{6}})")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Period(enum.StrEnum):
    """The calendar period a token quota counts over."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _check(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), _CHECK_CHARS)


def new_secret() -> str:
    """A new client secret (`sk-lgw_<random>_<check>`)."""
    random_part = _base62(secrets.randbits(256), _RANDOM_CHARS)
    return f"{TOKEN_PREFIX}{random_part}_{_check(random_part)}"


def well_formed(token: str) -> bool:
    """Whether `token` has a client secret's shape and a matching checksum."""
    found = _SHAPE.fullmatch(token)
    return found is not None and _check(found.group(1)) == found.group(2)


def shown(token: str) -> tuple[str, str]:
    """The parts of a secret that may be shown: its first 11 characters and its last 4."""
    return token[: len(TOKEN_PREFIX) + 4], token[-4:]


_RELATIVE = re.compile(r"(\d{1,5})([dhw])")
_UNIT_SEC = {"h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_when(text: str, now: float) -> float | None:
    """An expiry as epoch seconds: a date (`2027-01-01`, midnight UTC), an ISO time (UTC when
    it names no zone) or a span from `now` (`30d`, `12h`, `2w`); None when it is none of
    these."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        return now + int(relative.group(1)) * _UNIT_SEC[relative.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return epoch_of(when)


def epoch_of(when: date | datetime) -> float:
    """`when` as epoch seconds: a date at midnight UTC, a naive time as UTC."""
    if not isinstance(when, datetime):
        return float(calendar.timegm(when.timetuple()))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso_utc(at: float) -> str:
    """Epoch seconds `at` as an ISO time in UTC to the second (`2027-01-01T00:00:00Z`)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_span(text: str) -> float | None:
    """A grace span (`24h`, `2d`, `1w`, `0h`) in seconds, or None."""
    relative = _RELATIVE.fullmatch(text.strip())
    return None if relative is None else int(relative.group(1)) * _UNIT_SEC[relative.group(2)]


def networks(ranges: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the first bad one."""
    found = []
    for text in ranges:
        try:
            found.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ClientRules:
    """A client token's rules besides its reach. `expires_at` is epoch seconds (None: never);
    `allow_ips` empty: any address; a limit of None: unlimited. `rpm`, `tpm`, `max_parallel`
    and `quota_tokens` (per `period`) are enforced at the edge."""

    name: str
    expires_at: float | None = None
    allow_ips: tuple[Network, ...] = ()
    models: tuple[str, ...] = ()  # globs over the model names it may ask for (empty: any)
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    quota_tokens: int | None = None
    period: Period | None = None

    def expired(self, now: float) -> bool:
        """Whether the token is past its expiry at `now`."""
        return self.expires_at is not None and now >= self.expires_at

    def admits(self, address: str) -> bool:
        """Whether a request from `address` may use the token."""
        if not self.allow_ips:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow_ips)

    @property
    def limited(self) -> bool:
        """Whether the edge counts this client's requests (an `rpm` or `max_parallel`)."""
        return self.rpm is not None or self.max_parallel is not None
