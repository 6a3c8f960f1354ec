"""Exact in-process counting of per-key limits: leases in flight, requests per minute and
tokens per minute (each request's reservation, adjusted once its real usage is known).

Pure: no I/O, no clock; every method that needs the time takes `now` (epoch seconds). Used by
the `local` backend as it is, and by the `postgres` backend with each limit cut to this
process's share of it (`share_of`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

WINDOW_SEC = 60.0
"""The `rpm` window: at most `rpm` requests in any `WINDOW_SEC` seconds (a sliding window)."""
BUSY_RETRY_SEC = 1.0
"""The Retry-After of a key at its `max_concurrent`: a slot may free at any moment."""
MOST_WALKED = 64
"""The spends a tokens refusal looks at to say when enough will have left the window: when
more must leave, the wait is until the last of these has (a lower bound, found in bounded
time however busy the slot)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a key may not take one more request now, and in how many seconds to ask again.

    `busy`: at its `max_concurrent`; `rate`: at its `rpm` (or this process's share is 0);
    `tokens`: at its `tpm` (the request's reservation does not fit the last 60 s).
    """

    reason: Literal["busy", "rate", "tokens"]
    retry_after: float


def share_of(limit: int, rank: int, size: int) -> int:
    """Member `rank`'s part of `limit` split among `size` members: the parts add up to `limit`
    and differ by at most one (the first `limit % size` members get the extra one)."""
    base, extra = divmod(limit, size)
    return base + (1 if rank < extra else 0)


@dataclass(slots=True)
class _Spend:
    """One request's tokens on a slot: reserved at `at`, adjusted to its real usage later."""

    at: float
    amount: int
    live: bool = True  # still within its slot's window (counted in `_Usage.spent`)


@dataclass(slots=True)
class _Usage:
    inflight: int = 0
    recent: deque[float] = field(default_factory=deque)  # start times within the window
    spends: deque[_Spend] = field(default_factory=deque)  # token spends within the window
    spent: int = 0  # the sum of `spends`

    def prune_tokens(self, now: float) -> None:
        """Drop the spends older than the window."""
        spends = self.spends
        while spends and spends[0].at <= now - WINDOW_SEC:
            gone = spends.popleft()
            gone.live = False
            self.spent -= gone.amount

    def tokens_refusal(self, tpm: int, amount: int, now: float) -> Refusal | None:
        """Why `amount` more tokens do not fit `tpm` now (with the wait until they would),
        or None. `amount` is at most `tpm` (`fit`)."""
        self.prune_tokens(now)
        if tpm <= 0:  # this process's share is 0
            return Refusal("tokens", WINDOW_SEC)
        over = self.spent + amount - tpm
        if over <= 0:
            return None
        freed, wait = 0, WINDOW_SEC
        for spend in itertools.islice(self.spends, MOST_WALKED):  # the oldest free first
            freed += spend.amount
            wait = spend.at + WINDOW_SEC - now
            if freed >= over:
                break
        return Refusal("tokens", max(wait, 0.001))


def fit(amount: int, tpm: int) -> int:
    """A reservation as counted against `tpm`: one larger than the whole limit takes the whole
    minute (it waits for an empty window instead of being refused for ever)."""
    return max(0, min(amount, tpm))


@dataclass(slots=True)
class LocalCounts:
    """Leases in flight and recent request times per limited slot, and who holds what."""

    _usage: dict[Hashable, _Usage] = field(default_factory=dict)
    _held: dict[Hashable, Hashable] = field(default_factory=dict)  # token → slot
    _spends: dict[Hashable, tuple[_Usage, _Spend]] = field(default_factory=dict)  # by token

    def take(
        self,
        slot: Hashable,
        token: Hashable,
        max_concurrent: int | None,
        rpm: int | None,
        now: float,
        tpm: int | None = None,
        amount: int = 0,
    ) -> Refusal | None:
        """Count one request on `slot` held as `token` (with `amount` tokens reserved when
        `tpm` is set: see `spent`), or say why it may not start now."""
        usage = self._usage_of(slot)
        if max_concurrent is not None and usage.inflight >= max_concurrent:
            return Refusal("busy", BUSY_RETRY_SEC)
        if rpm is not None:
            recent = usage.recent
            while recent and recent[0] <= now - WINDOW_SEC:
                recent.popleft()
            if len(recent) >= rpm:
                wait = recent[0] + WINDOW_SEC - now if recent else WINDOW_SEC
                return Refusal("rate", wait)
        if tpm is not None:
            refusal = self._reserve_on(usage, token, tpm, amount, now)
            if refusal is not None:
                return refusal
        if rpm is not None:
            usage.recent.append(now)
        usage.inflight += 1
        self._held[token] = slot
        return None

    def reserve(
        self, slot: Hashable, token: Hashable, tpm: int, amount: int, now: float
    ) -> Refusal | None:
        """Reserve `amount` tokens on `slot` as `token` (nothing held in flight), or say why
        they do not fit its `tpm` now."""
        return self._reserve_on(self._usage_of(slot), token, tpm, amount, now)

    def _usage_of(self, slot: Hashable) -> _Usage:
        usage = self._usage.get(slot)
        if usage is None:
            usage = self._usage[slot] = _Usage()
        return usage

    def _reserve_on(
        self, usage: _Usage, token: Hashable, tpm: int, amount: int, now: float
    ) -> Refusal | None:
        """`amount` tokens (as `fit` counts them) reserved on `usage` as `token`, or why not."""
        amount = fit(amount, tpm)
        refusal = usage.tokens_refusal(tpm, amount, now)
        if refusal is not None:
            return refusal
        spend = _Spend(now, amount)
        usage.spends.append(spend)
        usage.spent += amount
        self._spends[token] = (usage, spend)
        return None

    def spent(self, token: Hashable, amount: int | None) -> None:
        """The request that reserved tokens as `token` used `amount` (None: unknown, the
        reservation stands); a spend already out of the window, or never made, is ignored."""
        held = self._spends.pop(token, None)
        if held is None or amount is None:
            return
        usage, spend = held
        if spend.live:
            usage.spent += amount - spend.amount
        spend.amount = amount

    def give_back(self, token: Hashable) -> None:
        """The request held as `token` ended (a token never taken, or given back, is ignored)."""
        slot = self._held.pop(token, None)
        if slot is None:
            return
        usage = self._usage[slot]
        usage.inflight -= 1
        if usage.inflight == 0 and not usage.recent and not usage.spends:
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

    def tokens(self, slot: Hashable, now: float) -> int:
        """Tokens spent (or reserved) on `slot` within the window before `now`."""
        usage = self._usage.get(slot)
        if usage is None:
            return 0
        usage.prune_tokens(now)
        return usage.spent

    def unsettled(self) -> int:
        """Token reservations not settled yet (`spent`): the requests holding one now."""
        return len(self._spends)
