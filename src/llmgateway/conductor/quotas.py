"""The token quotas of one gateway process: each client's spend in its current calendar period
(`core.quota`), and the refusal once it is spent.

A client's spend is the store's sum for the period, read at each clients refresh (one grouped
query for every client with a quota: `read`), plus what this process counted since that read
began and the store may not hold yet: the tokens counted (`count`, by the token write-behind on
the request path) less those written (`written`) before the read began. Other gateways' tokens
reach this one at its next read after their next write; so a client may go over its quota by
what it spends, on every gateway together, in one refresh interval and one write interval (plus
the answers in flight when it is spent). A period that ends starts the spend again at 0 without
waiting for a read.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from llmgateway.conductor.admission import Refused
from llmgateway.core.clients import ClientRules, Period
from llmgateway.core.quota import UTC_ZONE, period_bounds, period_starts

Sums = Callable[
    [Mapping[Period, int], Collection[str]], Awaitable[Mapping[str, Mapping[Period, int]]]
]
"""The store's token sums per client since each period's start (`store.token_usage.period_sums`)."""

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


@dataclass(slots=True)
class Quotas:
    """Every client with a quota, by name (names outlive refreshes and reloads)."""

    zone: ZoneInfo = UTC_ZONE
    _spends: dict[str, Spend] = field(default_factory=dict)

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
        began = {name: self.spend(name, now) for name in self._spends}
        bases = {name: (spend.start, spend.written) for name, spend in began.items() if spend}
        found = await sums(period_starts(now, self.zone), list(bases))
        for name, (start, written) in bases.items():
            spend = self._spends.get(name)
            if spend is None or spend.start != start:
                continue  # its quota changed or its period ended meanwhile
            spend.stored = found.get(name, {}).get(spend.period, 0)
            spend.read_base = written

    def refusal(self, rules: ClientRules, now: float) -> Refused | None:
        """The 429 for a client whose quota is spent (None: it may go on)."""
        spend = self.spend(rules.name, now)
        if spend is None or spend.spent < spend.limit:
            return None
        ends = datetime.fromtimestamp(spend.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
