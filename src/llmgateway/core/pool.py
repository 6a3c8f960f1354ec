"""The in-memory key pool of one provider instance: eligibility, selection, cooldowns, ejection.

Pure: no I/O, no clock, no asyncio. Every method that needs the time takes `now` (epoch
seconds) and randomness comes from the `random.Random` given at construction.

Selection is O(1) amortised. Each model scope keeps a bag of the keys believed eligible. A key
leaves it as soon as its state says so (invalid, cooling, out of quota, ejected) and comes back
when a deadline heap says its time is up or the store restores it. A request samples two keys
from the bag and takes the one with fewer requests in flight ("power of two choices").

Facts (invalid key, rate limit, no quota, no model) come from outcomes and from the store; the
store's cooldowns only ever move a local deadline later. Statistical ejections (5xx, timeouts)
stay in this process, as in Envoy: a 5xx status read back from the store restricts nothing.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections import Counter
from collections.abc import Collection, Iterable, KeysView
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmgateway.core.egress import DIRECT
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome

_SAMPLES = 8  # random draws before falling back to a scan of the scope's bag
_KEY_LEVEL = frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS})
_BLOCKING = frozenset({KeyStatus.NO_QUOTA, KeyStatus.NO_MODEL})
_NO_SCOPES: frozenset[str] = frozenset()

State = Literal["healthy", "untested", "cooling", "ejected", "invalid", "no_quota", "no_model"]


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
    model: str  # the status scope: the request's model, or ALL_MODELS when shared


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
class _Scoped:
    """A key's state for one scope (model, or ALL_MODELS)."""

    status: KeyStatus  # the durable status last known (read from the store or reported to it)
    cooldown_until: float = 0.0  # rate limit: only ever moves later
    blocked_until: float = 0.0  # no_quota / no_model: lifted by the store; inf = until then
    rate_limits: int = 0  # 429s in a row, for the default cooldown
    parked: float = 0.0  # the deadline this key waits for in the scope's heap (0: none)


@dataclass(slots=True, eq=False)
class _Key:
    key_id: int
    secret: str = field(repr=False)
    egress: str
    # the key's state per scope: most keys have one scope, kept in two slots; a dict only
    # for further ones (100k keys: ~15 MB less than a dict per key)
    first_scope: str | None = None
    first_state: _Scoped | None = None
    more_scopes: dict[str, _Scoped] | None = None
    # scopes reporting invalid_key/no_access; immutable, so the common empty case shares one
    # object instead of costing a set per key (100k keys: ~20 MB)
    invalid_in: frozenset[str] = _NO_SCOPES
    inflight: int = 0
    failures: int = 0  # provider-side failures in a row
    ejections: int = 0  # ejections in a row (the multiplier), decaying while healthy
    ejected_until: float = 0.0
    # positions in the two bags nearly every key is in (see `_Bag`); -1: not in it
    ready_at: int = -1
    ejected_at: int = -1

    def scoped(self, name: str) -> _Scoped | None:
        """The key's state in scope `name`, if it has one."""
        if name == self.first_scope:
            return self.first_state
        return self.more_scopes.get(name) if self.more_scopes is not None else None

    def put(self, name: str, state: _Scoped) -> _Scoped:
        """Give the key a state in scope `name` (it had none); returns it."""
        if self.first_scope is None:
            self.first_scope, self.first_state = name, state
        elif self.more_scopes is None:
            self.more_scopes = {name: state}
        else:
            self.more_scopes[name] = state
        return state


class _Bag:
    """Keys with O(1) add, remove and random access (swap-remove).

    A key's position is kept in a slot of the key (`slot`: `ready_at` for the first configured
    scope, `ejected_at` for the ejected keys) or, for the bags of other scopes, in a dict: a
    dict for every bag would cost ~8 MB per 100,000 keys."""

    __slots__ = ("_pos", "_slot", "items")

    def __init__(self, slot: Literal["ready_at", "ejected_at"] | None = None) -> None:
        self.items: list[_Key] = []
        self._slot = slot
        self._pos: dict[int, int] = {}

    def add(self, key: _Key) -> None:
        slot = self._slot
        if slot is None:
            if key.key_id not in self._pos:
                self._pos[key.key_id] = len(self.items)
                self.items.append(key)
        elif getattr(key, slot) < 0:
            setattr(key, slot, len(self.items))
            self.items.append(key)

    def discard(self, key: _Key) -> None:
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
class _Scope:
    name: str
    ready: _Bag = field(default_factory=_Bag)  # the first configured scope's: _Bag("ready_at")
    waiting: list[tuple[float, int]] = field(default_factory=list)  # (deadline, key_id) heap
    cursor: int = 0  # round-robin position


class KeyPool:
    """The keys of ONE provider instance, and which of them may serve a request now."""

    def __init__(
        self,
        provider: str,
        *,
        shared: bool,
        models: Iterable[str],
        selection: Selection,
        outlier: OutlierConfig,
        rng: random.Random,
        max_inflight: int | None = None,
    ) -> None:
        self.provider = provider
        self._shared = shared
        self._models = tuple(models)
        self._selection = selection
        self._outlier = outlier
        self._rng = rng
        self._max_inflight = max_inflight
        self._keys: dict[int, _Key] = {}
        names = (ALL_MODELS,) if shared else self._models
        self._scopes: dict[str, _Scope] = {
            name: _Scope(name, _Bag("ready_at" if index == 0 else None))
            for index, name in enumerate(names)
        }
        self._ejected = _Bag("ejected_at")
        self._ejections: list[tuple[float, int]] = []  # (ejected_until, key_id) heap
        self._leases: dict[int, _Key] = {}
        self._last_lease = 0

    # -- the snapshot from the store ----------------------------------------------------------

    def load(self, entries: Iterable[KeyEntry], now: float) -> None:
        """Replace the pool by a full snapshot; local counters of surviving keys are kept."""
        entries = list(entries)
        present = {entry.key_id for entry in entries}
        self.apply(entries, [k for k in self._keys if k not in present], now)

    def apply(
        self, entries: Iterable[KeyEntry], removed_key_ids: Iterable[int], now: float
    ) -> None:
        """Apply a delta: removed keys leave at once, new keys join, statuses take effect."""
        for key_id in removed_key_ids:
            key = self._keys.pop(key_id, None)
            if key is not None:
                self._ejected.discard(key)
                for scope in self._scopes.values():
                    scope.ready.discard(key)
        for entry in entries:
            self._apply_entry(entry, now)
        self._within_ejection_cap(now)

    def _apply_entry(self, entry: KeyEntry, now: float) -> None:
        key = self._keys.get(entry.key_id)
        fresh = key is None
        if key is None:
            key = self._keys[entry.key_id] = _Key(entry.key_id, entry.secret, entry.egress)
        else:
            key.secret, key.egress = entry.secret, entry.egress
        name = entry.model
        if name not in self._scopes:  # the other mode's row, or a model not configured here
            if fresh:
                self._place_everywhere(key, now)
            return
        status = entry.status
        st = key.scoped(name)
        changed = st is None or st.status != status
        if st is None:
            st = key.put(name, _Scoped(status))
        st.status = status
        was_invalid = bool(key.invalid_in)
        if status in _KEY_LEVEL:
            if name not in key.invalid_in:
                key.invalid_in = key.invalid_in | {name}
        elif name in key.invalid_in:
            key.invalid_in = key.invalid_in - {name} or _NO_SCOPES
        until = entry.cooldown_until
        if status is KeyStatus.RATE_LIMITED and until is not None:
            st.cooldown_until = max(st.cooldown_until, until)
        if status in _BLOCKING:
            st.blocked_until = math.inf if until is None else until
        else:
            st.blocked_until = 0.0
        unejected = status is KeyStatus.VALID and changed and key.ejected_until > now
        if unejected:  # a probe passed: un-eject and forget the failures (Envoy does the same)
            key.ejected_until, key.failures = now, 0
            self._ejected.discard(key)
        if fresh or unejected or was_invalid != bool(key.invalid_in):
            self._place_everywhere(key, now)
        else:
            self._place(key, self._scopes[name], now)

    # -- selection -----------------------------------------------------------------------------

    def scope(self, model: str) -> str:
        """The status scope of a request for `model`: ALL_MODELS when shared, else the model."""
        return ALL_MODELS if self._shared else model

    def acquire(
        self, model: str, now: float, exclude: Collection[int] = frozenset()
    ) -> Lease | Unavailable:
        """Pick a key for `model` (not one in `exclude`) and count it in flight, or say why not.

        `model` is a configured model name or pattern (the edge resolves what a client asked
        for): scopes are never made per requested name, so no client can grow them."""
        self._expire(now)
        scope = self._scopes[self.scope(model)]
        self._unpark(scope, now)
        if self._selection is Selection.ROUND_ROBIN:
            key = self._round_robin(scope, now, exclude)
        else:
            key = self._two_choices(scope, now, exclude)
        if key is None:
            key = self._panic(scope, now, exclude)
            if key is None:
                return self._unavailable(scope, now)
        key.inflight += 1
        self._last_lease += 1
        self._leases[self._last_lease] = key
        return Lease(self._last_lease, key.key_id, key.secret, key.egress, scope.name)

    def _fits(self, key: _Key, scope: _Scope, now: float, exclude: Collection[int]) -> bool:
        if key.key_id in exclude or (
            self._max_inflight is not None and key.inflight >= self._max_inflight
        ):
            return False
        if _usable(key, scope.name, now):
            return True
        self._place(key, scope, now)  # its state changed since it joined the bag
        return False

    def _two_choices(self, scope: _Scope, now: float, exclude: Collection[int]) -> _Key | None:
        items = scope.ready.items
        if len(items) <= _SAMPLES:
            return self._scan(scope, now, exclude)
        rand = self._rng.random
        first: _Key | None = None
        for _ in range(_SAMPLES):
            if not items:
                break
            key = items[int(rand() * len(items))]
            if key is first or not self._fits(key, scope, now, exclude):
                continue
            if first is None:
                first = key
                continue
            return key if key.inflight < first.inflight else first
        return first if first is not None else self._scan(scope, now, exclude)

    def _scan(self, scope: _Scope, now: float, exclude: Collection[int]) -> _Key | None:
        found = [key for key in list(scope.ready.items) if self._fits(key, scope, now, exclude)]
        return self._better_of_two(found)

    def _better_of_two(self, found: list[_Key]) -> _Key | None:
        if len(found) < 2:
            return found[0] if found else None
        rand = self._rng.random
        i = int(rand() * len(found))
        j = int(rand() * (len(found) - 1))
        a, b = found[i], found[j + (j >= i)]
        return b if b.inflight < a.inflight else a

    def _round_robin(self, scope: _Scope, now: float, exclude: Collection[int]) -> _Key | None:
        items = scope.ready.items
        for _ in range(len(items)):
            if not items:
                break
            index = scope.cursor % len(items)
            key = items[index]
            scope.cursor = index + 1
            if self._fits(key, scope, now, exclude):
                return key
            if index < len(items) and items[index] is not key:
                scope.cursor = index  # swap-removed: the key moved here is next
        return None

    def _panic(self, scope: _Scope, now: float, exclude: Collection[int]) -> _Key | None:
        """Nothing eligible: if ejections alone are why, ignore them rather than fail (Envoy)."""
        cap = self._max_inflight
        found = [
            key
            for key in self._ejected.items
            if key.key_id not in exclude
            and (cap is None or key.inflight < cap)
            and _usable(key, scope.name, now, ejected_ok=True)
        ]
        return self._better_of_two(found)

    def _unavailable(self, scope: _Scope, now: float) -> Unavailable:
        waiting = scope.waiting
        while waiting:
            until, key_id = waiting[0]
            key = self._keys.get(key_id)
            st = key.scoped(scope.name) if key is not None else None
            if key is not None and st is not None and st.parked == until and not key.invalid_in:
                return Unavailable("rate_limited", until - now)
            heapq.heappop(waiting)
            if st is not None and st.parked == until:
                st.parked = 0.0
        heap = self._ejections
        while heap:
            until, key_id = heap[0]
            key = self._keys.get(key_id)
            if key is not None and key.ejected_until == until and not key.invalid_in:
                return Unavailable("no_keys", until - now)
            if key is None or key.ejected_until != until:
                heapq.heappop(heap)
            else:
                break
        return Unavailable("no_keys", None)

    # -- outcomes ------------------------------------------------------------------------------

    def release(self, lease: Lease, outcome: Outcome, now: float) -> StatusChange | None:
        """Give a lease back and learn from its outcome; a second release of a lease is ignored.

        Returns the durable change to write to the store, if any.
        """
        key = self._leases.pop(lease.lease_id, None)
        if key is None:
            return None
        key.inflight -= 1
        if self._keys.get(key.key_id) is not key:  # removed meanwhile
            return None
        self._expire(now)
        if outcome.ok:
            return self._succeeded(key, lease.model, outcome, now)
        if outcome.blame is Blame.KEY and outcome.reason in _KEY_FAULTS:
            return self._key_fault(key, lease.model, outcome, now)
        if outcome.blame in (Blame.KEY, Blame.PROVIDER):
            return self._provider_fault(key, lease.model, outcome, now)
        return None  # CLIENT and EGRESS: never the key's doing

    def _succeeded(self, key: _Key, name: str, outcome: Outcome, now: float) -> StatusChange | None:
        key.failures = 0
        st = key.scoped(name)
        if st is None:
            return None  # a model outside the config has no durable row
        st.rate_limits = 0
        if st.status is KeyStatus.VALID or not _usable(key, name, now, ejected_ok=True):
            return None  # already known, or a fact learnt since this lease began stands
        st.status = KeyStatus.VALID
        return StatusChange(key.key_id, name, KeyStatus.VALID, None, None, outcome.status)

    def _key_fault(self, key: _Key, name: str, outcome: Outcome, now: float) -> StatusChange | None:
        reason = outcome.reason
        assert reason is not None
        status = KeyStatus(reason.value)
        if reason is ErrorReason.NO_MODEL and self._shared:
            return None  # one missing model says nothing about a shared key
        st = key.scoped(name)
        if st is None:
            st = key.put(name, _Scoped(KeyStatus.UNTESTED))
        until: float | None = None
        if status in _KEY_LEVEL:
            if st.status is status and name in key.invalid_in:
                return None
            key.invalid_in = key.invalid_in | {name}
        elif reason is ErrorReason.RATE_LIMITED:
            st.rate_limits += 1
            delay = outcome.retry_after
            if delay is None:
                o = self._outlier
                delay = min(
                    o.default_cooldown_sec * 2.0 ** min(st.rate_limits - 1, 64), o.max_cooldown_sec
                )
            if now + delay <= st.cooldown_until:
                return None
            st.cooldown_until = until = now + delay
        elif reason is ErrorReason.NO_QUOTA:
            until = max(st.blocked_until, now + self._outlier.no_quota_cooldown_sec)
            st.blocked_until = until
        else:  # NO_MODEL
            if st.blocked_until == math.inf:
                return None
            st.blocked_until = math.inf
        st.status = status
        if status in _KEY_LEVEL:
            for scope in self._scopes.values():
                scope.ready.discard(key)
        else:
            self._place(key, self._scopes[name], now)
        return StatusChange(key.key_id, name, status, reason, until, outcome.status)

    def _provider_fault(
        self, key: _Key, name: str, outcome: Outcome, now: float
    ) -> StatusChange | None:
        key.failures += 1
        o = self._outlier
        # one unexplained 401 is enough to doubt a key: out at once, and the Keeper's probe
        # (asked for by the status written below) tells whether it is invalid
        doubted = outcome.reason is ErrorReason.AUTH_REFUSED
        if (key.failures < o.consecutive_failures and not doubted) or key.ejected_until > now:
            return None
        if len(self._ejected) >= self._ejection_cap():
            return None  # too many ejected already: keep it in rotation
        healthy_for = now - key.ejected_until
        times = max(0, key.ejections - int(healthy_for / o.base_ejection_sec)) + 1
        jitter = o.jitter_percent / 100 * (2 * self._rng.random() - 1)
        duration = min(o.base_ejection_sec * times, o.max_ejection_sec) * (1 + jitter)
        key.ejections, key.failures = times, 0
        key.ejected_until = until = now + duration
        self._ejected.add(key)
        heapq.heappush(self._ejections, (until, key.key_id))
        for scope in self._scopes.values():
            scope.ready.discard(key)
        reason = outcome.reason or ErrorReason.SERVER_ERROR
        status = KeyStatus(reason.value)
        st = key.scoped(name)
        if st is not None:
            st.status = status
        return StatusChange(key.key_id, name, status, reason, until, outcome.status)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _place(self, key: _Key, scope: _Scope, now: float) -> None:
        """Put the key where it belongs for `scope`: in the bag, waiting for a deadline, or out."""
        if key.invalid_in or key.ejected_until > now:
            scope.ready.discard(key)  # the store or the ejection heap brings it back
            return
        st = key.scoped(scope.name)
        until = max(st.cooldown_until, st.blocked_until) if st is not None else 0.0
        if st is None or until <= now:
            scope.ready.add(key)
            return
        scope.ready.discard(key)
        if until != math.inf and until != st.parked:
            st.parked = until
            heapq.heappush(scope.waiting, (until, key.key_id))

    def _place_everywhere(self, key: _Key, now: float) -> None:
        for scope in self._scopes.values():
            self._place(key, scope, now)

    def _unpark(self, scope: _Scope, now: float) -> None:
        waiting = scope.waiting
        while waiting and waiting[0][0] <= now:
            until, key_id = heapq.heappop(waiting)
            key = self._keys.get(key_id)
            st = key.scoped(scope.name) if key is not None else None
            if key is not None and st is not None and st.parked == until:
                st.parked = 0.0
                self._place(key, scope, now)

    def _within_ejection_cap(self, now: float) -> None:
        """After keys left, end the ejections ending soonest until the share is under the cap."""
        self._expire(now)
        heap = self._ejections
        while heap and len(self._ejected) > self._ejection_cap():
            until, key_id = heapq.heappop(heap)
            key = self._keys.get(key_id)
            if key is not None and key.ejected_until == until:
                key.ejected_until = now
                self._ejected.discard(key)
                self._place_everywhere(key, now)

    def _ejection_cap(self) -> int:
        return int(len(self._keys) * self._outlier.max_ejection_percent / 100)

    def _expire(self, now: float) -> None:
        heap = self._ejections
        while heap and heap[0][0] <= now:
            until, key_id = heapq.heappop(heap)
            key = self._keys.get(key_id)
            if key is not None and key.ejected_until == until:
                self._ejected.discard(key)
                self._place_everywhere(key, now)

    # -- introspection -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """How many keys the pool holds."""
        return len(self._keys)

    def key_ids(self) -> KeysView[int]:
        """The ids of every key in the pool (a live view: copy it to change the pool while
        going through it)."""
        return self._keys.keys()

    def inflight(self, key_id: int) -> int:
        """Requests in flight on a key (0 for an unknown key)."""
        key = self._keys.get(key_id)
        return key.inflight if key is not None else 0

    def ejected_count(self, now: float) -> int:
        """Keys statistically ejected at `now`."""
        self._expire(now)
        return len(self._ejected)

    def state(self, key_id: int, model: str, now: float) -> State | None:
        """What one key is for `model` at `now` (None for an unknown key)."""
        key = self._keys.get(key_id)
        return None if key is None else _state(key, self.scope(model), now)

    def counts(self, now: float) -> dict[tuple[str, str], int]:
        """Keys by (scope, state), for metrics and `status`; O(keys × scopes)."""
        tally: Counter[tuple[str, str]] = Counter()
        for name in self._scopes:
            for key in self._keys.values():
                tally[(name, _state(key, name, now))] += 1
        return dict(tally)


_KEY_FAULTS = frozenset(
    {
        ErrorReason.INVALID_KEY,
        ErrorReason.NO_ACCESS,
        ErrorReason.RATE_LIMITED,
        ErrorReason.NO_QUOTA,
        ErrorReason.NO_MODEL,
    }
)


def _usable(key: _Key, name: str, now: float, *, ejected_ok: bool = False) -> bool:
    if key.invalid_in or (key.ejected_until > now and not ejected_ok):
        return False
    st = key.scoped(name)
    return st is None or (st.cooldown_until <= now and st.blocked_until <= now)


def _state(key: _Key, name: str, now: float) -> State:
    if key.invalid_in:
        return "invalid"
    st = key.scoped(name)
    if st is not None and st.blocked_until > now:
        return "no_model" if st.status is KeyStatus.NO_MODEL else "no_quota"
    if st is not None and st.cooldown_until > now:
        return "cooling"
    if key.ejected_until > now:
        return "ejected"
    if st is None or st.status is KeyStatus.UNTESTED:
        return "untested"
    return "healthy"
