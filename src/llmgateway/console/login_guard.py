"""Slowing down guesses of the admin token: after a few failures from one address, every
further try from it must wait, twice as long after each failure (up to `MAX_WAIT_SEC`); a try
during the wait is refused before the token is looked at. Memory is bounded: at most
`MAX_ADDRESSES` addresses are remembered, the least recently failing forgotten first."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

FREE_FAILURES = 3
"""Failures from one address before it has to wait."""
FIRST_WAIT_SEC = 1.0
"""The wait after the first failure beyond the free ones; each further failure doubles it."""
MAX_WAIT_SEC = 300.0
"""The longest wait between two tries from one address."""
FORGET_AFTER_SEC = 3600.0
"""An address that has not failed for this long starts afresh."""
MAX_ADDRESSES = 10_000
"""Addresses remembered at most (about 1 MB)."""


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    until: float


@dataclass(slots=True)
class LoginGuard:
    """Failures per client address, and how long each must wait before its next try."""

    max_addresses: int = MAX_ADDRESSES
    _seen: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)

    def wait(self, address: str, now: float) -> float:
        """Seconds `address` must still wait before a try is looked at (0: go ahead)."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        if now - entry.last >= FORGET_AFTER_SEC:
            del self._seen[address]
            return 0.0
        return max(0.0, entry.until - now)

    def failed(self, address: str, now: float) -> float:
        """Note a failed try from `address` at `now`; the wait it now has (seconds)."""
        entry = self._seen.pop(address, None)
        if entry is None or now - entry.last >= FORGET_AFTER_SEC:
            entry = _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        beyond = entry.count - FREE_FAILURES
        delay = 0.0 if beyond <= 0 else min(MAX_WAIT_SEC, FIRST_WAIT_SEC * 2 ** min(beyond - 1, 30))
        entry.until = now + delay
        self._seen[address] = entry
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return delay

    def succeeded(self, address: str) -> None:
        """A right token from `address`: its failures are forgotten."""
        self._seen.pop(address, None)

    def __len__(self) -> int:
        return len(self._seen)
