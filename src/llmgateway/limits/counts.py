"""Exact in-process counting of per-key limits: leases in flight and requests per minute.

Pure: no I/O, no clock; every method that needs the time takes `now` (epoch seconds). Used by
the `local` backend as it is, and by the `postgres` backend with each limit cut to this
process's share of it (`share_of`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

WINDOW_SEC = 60.0
"""The `rpm` window: at most `rpm` requests in any `WINDOW_SEC` seconds (a sliding window)."""
BUSY_RETRY_SEC = 1.0
"""The Retry-After of a key at its `max_concurrent`: a slot may free at any moment."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a key may not take one more request now, and in how many seconds to ask again.

    `busy`: at its `max_concurrent`; `rate`: at its `rpm` (or this process's share is 0).
    """

    reason: Literal["busy", "rate"]
    retry_after: float


def share_of(limit: int, rank: int, size: int) -> int:
    """Member `rank`'s part of `limit` split among `size` members: the parts add up to `limit`
    and differ by at most one (the first `limit % size` members get the extra one)."""
    base, extra = divmod(limit, size)
    return base + (1 if rank < extra else 0)


@dataclass(slots=True)
class _Usage:
    inflight: int = 0
    recent: deque[float] = field(default_factory=deque)  # start times within the window


@dataclass(slots=True)
class LocalCounts:
    """Leases in flight and recent request times per limited slot, and who holds what."""

    _usage: dict[Hashable, _Usage] = field(default_factory=dict)
    _held: dict[Hashable, Hashable] = field(default_factory=dict)  # token → slot

    def take(
        self,
        slot: Hashable,
        token: Hashable,
        max_concurrent: int | None,
        rpm: int | None,
        now: float,
    ) -> Refusal | None:
        """Count one request on `slot` held as `token`, or say why it may not start now."""
        usage = self._usage.get(slot)
        if usage is None:
            usage = self._usage[slot] = _Usage()
        if max_concurrent is not None and usage.inflight >= max_concurrent:
            return Refusal("busy", BUSY_RETRY_SEC)
        if rpm is not None:
            recent = usage.recent
            while recent and recent[0] <= now - WINDOW_SEC:
                recent.popleft()
            if len(recent) >= rpm:
                wait = recent[0] + WINDOW_SEC - now if recent else WINDOW_SEC
                return Refusal("rate", wait)
            recent.append(now)
        usage.inflight += 1
        self._held[token] = slot
        return None

    def give_back(self, token: Hashable) -> None:
        """The request held as `token` ended (a token never taken, or given back, is ignored)."""
        slot = self._held.pop(token, None)
        if slot is None:
            return
        usage = self._usage[slot]
        usage.inflight -= 1
        if usage.inflight == 0 and not usage.recent:
            del self._usage[slot]

    def recent(self, slot: Hashable, now: float) -> int:
        """Requests started on `slot` within the window before `now`."""
        usage = self._usage.get(slot)
        if usage is None:
            return 0
        return sum(1 for started in usage.recent if started > now - WINDOW_SEC)

    def inflight(self, slot: Hashable) -> int:
        """Requests on `slot` now."""
        usage = self._usage.get(slot)
        return usage.inflight if usage is not None else 0
