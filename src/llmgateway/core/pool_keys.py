"""The parts of a key pool: what goes in and out of it, and the state it keeps for each key.

`KeyPool` (in `llmgateway.core.pool`) is built with a `Selection` and an `OutlierConfig`, takes
`KeyEntry`s from the store's snapshot, hands out `Lease`s or says why not (`Unavailable`), and
returns `StatusChange`s to write. Inside, a key has a state per scope (a model, or ALL_MODELS),
and each scope a bag of the keys believed eligible and a heap of those waiting for a deadline;
the functions here read and move one key or one scope.

Pure: no I/O, no clock; the time is passed in.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmgateway.core.egress import DIRECT
from llmgateway.core.key_states import BLOCKING, KEY_LEVEL, KeyState
from llmgateway.core.outcomes import ErrorReason, KeyStatus

NO_SCOPES: frozenset[str] = frozenset()


class Selection(enum.StrEnum):
    """How a key is picked among the eligible ones."""

    LEAST_INFLIGHT = "least_inflight"  # fewest in-flight of two random eligible keys
    ROUND_ROBIN = "round_robin"


class OutlierConfig(Protocol):
    """Ejections and cooldowns (`config.settings.OutlierDetection` is one, and documents them)."""

    @property
    def consecutive_failures(self) -> int: ...
    @property
    def base_ejection_sec(self) -> float: ...
    @property
    def max_ejection_sec(self) -> float: ...
    @property
    def max_ejection_percent(self) -> float: ...
    @property
    def jitter_percent(self) -> float: ...
    @property
    def default_cooldown_sec(self) -> float: ...
    @property
    def max_cooldown_sec(self) -> float: ...
    @property
    def no_quota_cooldown_sec(self) -> float: ...


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key × status model as the store snapshot yields it (`ALL_MODELS` when shared)."""

    key_id: int
    secret: str = field(repr=False)
    model: str
    status: KeyStatus
    cooldown_until: float | None
    egress: str = DIRECT


@dataclass(frozen=True, slots=True)
class Lease:
    """A key handed out for one attempt; give it back with `KeyPool.release()`."""

    lease_id: int
    key_id: int
    secret: str = field(repr=False)
    egress: str
    scope: str  # the status scope: the request's model, or ALL_MODELS when shared


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No key can serve now: `rate_limited` (answer 429) or `no_keys` (answer 503).

    `retry_after`: seconds until the earliest cooldown (or ejection) ends, when known.
    """

    reason: Literal["rate_limited", "no_keys"]
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A durable finding about a key the gateway should write to the store."""

    key_id: int
    model: str
    status: KeyStatus
    reason: ErrorReason | None
    cooldown_until: float | None
    status_code: int | None


@dataclass(slots=True)
class Scoped:
    """A key's state for one scope (model, or ALL_MODELS)."""

    status: KeyStatus  # the durable status last known (read from the store or reported to it)
    cooldown_until: float = 0.0  # rate limit: only ever moves later
    blocked_until: float = 0.0  # no_quota / no_model: lifted by the store; inf = until then
    rate_limits: int = 0  # 429s in a row, for the default cooldown
    parked: float = 0.0  # the deadline this key waits for in the scope's heap (0: none)


@dataclass(slots=True, eq=False)
class Key:
    """One key of the pool: its scopes' states, requests in flight, failures and ejection."""

    key_id: int
    secret: str = field(repr=False)
    egress: str
    # the key's state per scope: most keys have one scope, kept in two slots; a dict only
    # for further ones (100k keys: ~15 MB less than a dict per key)
    first_scope: str | None = None
    first_state: Scoped | None = None
    more_scopes: dict[str, Scoped] | None = None
    # scopes reporting invalid_key/no_access; immutable, so the common empty case shares one
    # object instead of costing a set per key (100k keys: ~20 MB)
    invalid_in: frozenset[str] = NO_SCOPES
    inflight: int = 0
    failures: int = 0  # provider-side failures in a row
    ejections: int = 0  # ejections in a row (the multiplier), decaying while healthy
    ejected_until: float = 0.0
    # positions in the two bags nearly every key is in (see `Bag`); -1: not in it
    ready_at: int = -1
    ejected_at: int = -1

    def scoped(self, name: str) -> Scoped | None:
        """The key's state in scope `name`, if it has one."""
        if name == self.first_scope:
            return self.first_state
        return self.more_scopes.get(name) if self.more_scopes is not None else None

    def put(self, name: str, state: Scoped) -> Scoped:
        """Give the key a state in scope `name` (it had none); returns it."""
        if self.first_scope is None:
            self.first_scope, self.first_state = name, state
        elif self.more_scopes is None:
            self.more_scopes = {name: state}
        else:
            self.more_scopes[name] = state
        return state

    def take_status(self, name: str, status: KeyStatus, until: float | None) -> bool:
        """Adopt the status the store holds for scope `name` (`until`: its cooldown or block
        deadline, None for none known); returns whether the scope's status changed."""
        st = self.scoped(name)
        changed = st is None or st.status != status
        if st is None:
            st = self.put(name, Scoped(status))
        if changed and status is KeyStatus.UNTESTED:
            # a row goes back to `untested` only by `llmgateway keys reset`: its cooldown goes
            # too (a cooldown otherwise only moves later)
            st.cooldown_until, st.rate_limits = 0.0, 0
        st.status = status
        if status in KEY_LEVEL:
            if name not in self.invalid_in:
                self.invalid_in = self.invalid_in | {name}
        elif name in self.invalid_in:
            self.invalid_in = self.invalid_in - {name} or NO_SCOPES
        if status is KeyStatus.RATE_LIMITED and until is not None:
            st.cooldown_until = max(st.cooldown_until, until)
        if status in BLOCKING:
            st.blocked_until = math.inf if until is None else until
        else:
            st.blocked_until = 0.0
        return changed


class Bag:
    """Keys with O(1) add, remove and random access (swap-remove).

    A key's position is kept in a slot of the key (`slot`: `ready_at` for the first configured
    scope, `ejected_at` for the ejected keys) or, for the bags of other scopes, in a dict: a
    dict for every bag would cost ~8 MB per 100,000 keys."""

    __slots__ = ("_pos", "_slot", "items")

    def __init__(self, slot: Literal["ready_at", "ejected_at"] | None = None) -> None:
        self.items: list[Key] = []
        self._slot = slot
        self._pos: dict[int, int] = {}

    def add(self, key: Key) -> None:
        slot = self._slot
        if slot is None:
            if key.key_id not in self._pos:
                self._pos[key.key_id] = len(self.items)
                self.items.append(key)
        elif getattr(key, slot) < 0:
            setattr(key, slot, len(self.items))
            self.items.append(key)

    def discard(self, key: Key) -> None:
        slot = self._slot
        if slot is None:
            index = self._pos.pop(key.key_id, -1)
        else:
            index = getattr(key, slot)
            setattr(key, slot, -1)
        if index < 0:
            return
        last = self.items.pop()
        if index < len(self.items):
            self.items[index] = last
            if slot is None:
                self._pos[last.key_id] = index
            else:
                setattr(last, slot, index)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True, eq=False)
class Scope:
    """One status scope of the pool: its bag of keys believed eligible, and the keys waiting
    for a deadline."""

    name: str
    ready: Bag = field(default_factory=Bag)  # the first configured scope's: Bag("ready_at")
    waiting: list[tuple[float, int]] = field(default_factory=list)  # (deadline, key_id) heap
    cursor: int = 0  # round-robin position
    untested_ok: bool = True  # may a key still untested here serve (serve_untested_keys)?


def place(key: Key, scope: Scope, now: float) -> None:
    """Put the key where it belongs for `scope`: in the bag, waiting for a deadline, or out."""
    st = key.scoped(scope.name)
    if key.invalid_in or key.ejected_until > now or (not scope.untested_ok and untested(st)):
        scope.ready.discard(key)  # back when the store (a probe) or the ejection heap says
        return
    until = max(st.cooldown_until, st.blocked_until) if st is not None else 0.0
    if st is None or until <= now:
        scope.ready.add(key)
        return
    scope.ready.discard(key)
    if until != math.inf and until != st.parked:
        st.parked = until
        heapq.heappush(scope.waiting, (until, key.key_id))


def better_of_two(found: list[Key], rng: random.Random) -> Key | None:
    """Of two keys drawn from `found`, the one with fewer requests in flight (None if empty)."""
    if len(found) < 2:
        return found[0] if found else None
    rand = rng.random
    i = int(rand() * len(found))
    j = int(rand() * (len(found) - 1))
    a, b = found[i], found[j + (j >= i)]
    return b if b.inflight < a.inflight else a


def unpark(scope: Scope, keys: Mapping[int, Key], now: float) -> None:
    """Put back where they belong the keys of `scope` whose deadline has come."""
    waiting = scope.waiting
    while waiting and waiting[0][0] <= now:
        until, key_id = heapq.heappop(waiting)
        key = keys.get(key_id)
        st = key.scoped(scope.name) if key is not None else None
        if key is not None and st is not None and st.parked == until:
            st.parked = 0.0
            place(key, scope, now)


def unavailable(
    scope: Scope, keys: Mapping[int, Key], ejections: list[tuple[float, int]], now: float
) -> Unavailable:
    """Why no key of `scope` can serve at `now`, and for how long as far as known; drops the
    stale entries of the scope's waiting heap and of the pool's `ejections` heap."""
    waiting = scope.waiting
    while waiting:
        until, key_id = waiting[0]
        key = keys.get(key_id)
        st = key.scoped(scope.name) if key is not None else None
        if key is not None and st is not None and st.parked == until and not key.invalid_in:
            return Unavailable("rate_limited", until - now)
        heapq.heappop(waiting)
        if st is not None and st.parked == until:
            st.parked = 0.0
    heap = ejections
    while heap:
        until, key_id = heap[0]
        key = keys.get(key_id)
        if key is not None and key.ejected_until == until and not key.invalid_in:
            return Unavailable("no_keys", until - now)
        if key is None or key.ejected_until != until:
            heapq.heappop(heap)
        else:
            break
    return Unavailable("no_keys", None)


def usable(
    key: Key, name: str, now: float, *, ejected_ok: bool = False, untested_ok: bool = True
) -> bool:
    """May the key serve scope `name` at `now` (an ejected one too when `ejected_ok`, one
    still untested there only when `untested_ok`)?"""
    if key.invalid_in or (key.ejected_until > now and not ejected_ok):
        return False
    st = key.scoped(name)
    if not untested_ok and untested(st):
        return False
    return st is None or (st.cooldown_until <= now and st.blocked_until <= now)


def untested(st: Scoped | None) -> bool:
    """Is nothing known yet about a key in a scope (its state there, None for none)?"""
    return st is None or st.status is KeyStatus.UNTESTED


def state_of(key: Key, name: str, now: float) -> KeyState:
    """What the key is for scope `name` at `now`."""
    if key.invalid_in:
        return "invalid"
    st = key.scoped(name)
    if st is not None and st.blocked_until > now:
        return "no_model" if st.status is KeyStatus.NO_MODEL else "no_quota"
    if st is not None and st.cooldown_until > now:
        return "cooling"
    if key.ejected_until > now:
        return "ejected"
    return "untested" if untested(st) else "healthy"
