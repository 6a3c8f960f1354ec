"""The token quotas of one gateway process: each client's spend in its current calendar period
(`core.quota`), and the refusal once it is spent.

A client's spend is the store's sum for the period, read at each clients refresh (one grouped
query for every client with a quota, over the last two hours: `read`; the sums of the hours
before are read again once an hour or every `SETTLED_SEC`), plus what this process counted
since that read began and the store may not hold yet: the tokens counted (`count`, by the
token write-behind on the request path) less those written (`written`) before the read began.
Other gateways' tokens reach this one at its next read after their next write; so a client may
go over its quota by what it spends, on every gateway together, in one refresh interval and
one write interval (plus the answers in flight when it is spent). A period that ends starts
the spend again at 0 without waiting for a read.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from llmgateway.conductor.admission import Refused
from llmgateway.core.clients import ClientRules, Period, iso_utc
from llmgateway.core.quota import HOUR, UTC_ZONE, period_bounds, period_starts

Found = Mapping[str, Mapping[Period, int]]
"""Tokens by client and period."""
Sums = Callable[[Mapping[Period, int], Collection[str], int | None], Awaitable[Found]]
"""The store's token sums per client since each period's start, before an hour when one is
given (`store.token_usage.period_sums`)."""

SETTLED_SEC = 300.0
"""How long the sums of the hours before the last two are kept before they are read again (a
gateway back from a store outage may still write an old hour's counts)."""

QUOTA_HEADERS = ("x-llmgateway-quota-limit-tokens", "x-llmgateway-quota-remaining-tokens")
"""A refusal's own quota figures (apart from `x-ratelimit-*`, which describe the rate limits)."""
QUOTA_RESET = "x-llmgateway-quota-reset"
"""When the quota renews: the period's end, an ISO time in UTC."""


@dataclass(slots=True)
class Spend:
    """One client's quota and its tokens in the period [start, end)."""

    limit: int
    period: Period
    start: int
    end: int
    stored: int = 0  # the store's sum for the period at the last read
    counted: int = 0  # tokens this process counted in the period
    written: int = 0  # of `counted`, those the store has taken
    read_base: int = 0  # `written` when the last read began (the store holds those)

    @property
    def spent(self) -> int:
        """The tokens spent in the period as far as this process knows."""
        return self.stored + self.counted - self.read_base


def _tokens(found: Found, client: str, period: Period) -> int:
    return found.get(client, {}).get(period, 0)


@dataclass(frozen=True, slots=True)
class _Settled:
    """The store's sums of the hours before `cut` (read at `at`), which no longer change but
    for a gateway's late write: read once an hour or every `SETTLED_SEC`, so that a refresh
    reads the last two hours only."""

    cut: int
    starts: Mapping[Period, int]
    clients: frozenset[str]
    at: float
    found: Found

    def holds(
        self, cut: int, starts: Mapping[Period, int], clients: Iterable[str], now: float
    ) -> bool:
        """Whether these sums serve a read at `now` of `clients` since `starts`."""
        fresh = now - self.at < SETTLED_SEC
        return (
            fresh and cut == self.cut and starts == self.starts and self.clients.issuperset(clients)
        )

    def tokens(self, client: str, period: Period) -> int:
        """`client`'s tokens in `period` before `cut`."""
        return _tokens(self.found, client, period)


@dataclass(slots=True)
class Quotas:
    """Every client with a quota, by name (names outlive refreshes and reloads)."""

    zone: ZoneInfo = UTC_ZONE
    _spends: dict[str, Spend] = field(default_factory=dict)
    _settled: _Settled | None = None

    @property
    def active(self) -> bool:
        """Whether any client has a quota (else nothing is counted or read)."""
        return bool(self._spends)

    def use_zone(self, zone: ZoneInfo) -> None:
        """Count the periods in `zone` from now on (`usage.timezone`); a new zone starts every
        spend again from the store's next read."""
        if zone != self.zone:
            self.zone = zone
            self._spends = {}

    def set_rules(self, rules: Collection[ClientRules], now: float) -> None:
        """The clients' quotas in force (at each clients refresh and config reload); a client
        whose period is unchanged keeps its spend."""
        spends: dict[str, Spend] = {}
        for rule in rules:
            if rule.quota_tokens is None:
                continue
            period = rule.period or Period.MONTH
            spend = self._spends.get(rule.name)
            if spend is None or spend.period is not period:
                spend = Spend(rule.quota_tokens, period, *period_bounds(period, now, self.zone))
            spend.limit = rule.quota_tokens
            spends[rule.name] = spend
        self._spends = spends

    def spend(self, client: str, now: float) -> Spend | None:
        """Client `client`'s spend in the period holding `now` (None: it has no quota)."""
        spend = self._spends.get(client)
        if spend is not None and now >= spend.end:
            self._roll(spend, now)
        return spend

    def _roll(self, spend: Spend, now: float) -> None:
        spend.start, spend.end = period_bounds(spend.period, now, self.zone)
        spend.stored = spend.counted = spend.written = spend.read_base = 0

    def count(self, client: str, hour: int, tokens: int) -> None:
        """`tokens` relayed for `client` in the hour starting at `hour` (the request path)."""
        spend = self._spends.get(client)
        if spend is None:
            return
        if hour >= spend.end:
            self._roll(spend, hour)
        if hour >= spend.start:
            spend.counted += tokens

    def written(self, client: str, hour: int, tokens: int) -> None:
        """The store took `tokens` of `client`'s hour starting at `hour`."""
        spend = self._spends.get(client)
        if spend is not None and spend.start <= hour < spend.end:
            spend.written += tokens

    async def read(self, sums: Sums, now: float) -> None:
        """Take the store's sums for the current periods (one query for every client)."""
        if not self._spends:
            return
        for name in self._spends:
            self.spend(name, now)  # a period that ended starts anew
        bases = {name: (spend, spend.start, spend.written) for name, spend in self._spends.items()}
        starts = period_starts(now, self.zone)
        cut = int(now // HOUR) * HOUR - HOUR  # the hours from here on may still be written
        settled = self._settled
        if settled is None or not settled.holds(cut, starts, bases.keys(), now):
            older = await sums(starts, list(bases), cut)
            settled = self._settled = _Settled(cut, starts, frozenset(bases), now, older)
        recent = await sums({p: max(start, cut) for p, start in starts.items()}, list(bases), None)
        for name, (spend, start, written) in bases.items():
            if self._spends.get(name) is not spend or spend.start != start:
                continue  # its quota changed or its period ended meanwhile
            spend.stored = settled.tokens(name, spend.period) + _tokens(recent, name, spend.period)
            spend.read_base = written

    def refusal(self, rules: ClientRules, now: float) -> Refused | None:
        """The 429 for a client whose quota is spent (None: it may go on)."""
        spend = self.spend(rules.name, now)
        if spend is None or spend.spent < spend.limit:
            return None
        ends = iso_utc(spend.end)
        message = (
            f"This client's token quota for the {spend.period.value} is spent "
            f"({spend.spent} of {spend.limit} tokens); it renews at {ends}."
        )
        headers = (
            (QUOTA_HEADERS[0], str(spend.limit)),
            (QUOTA_HEADERS[1], "0"),
            (QUOTA_RESET, ends),
        )
        wait = float(max(1, math.ceil(spend.end - now)))
        return Refused(429, "insufficient_quota", message, retry_after=wait, headers=headers)
