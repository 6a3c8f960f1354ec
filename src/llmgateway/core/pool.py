"""The in-memory key pool of one provider instance: eligibility, selection, cooldowns, ejection.

Pure: no I/O, no clock, no asyncio. Every method that needs the time takes `now` (epoch
seconds) and randomness comes from the `random.Random` given at construction.

Selection is O(1) amortised. Each model scope keeps a bag of the keys believed eligible. A key
leaves it as soon as its state says so (invalid, cooling, out of quota, ejected; untested, when
the provider serves only keys found healthy) and comes back when a deadline heap says its time
is up or the store restores it. A request samples two keys from the bag and takes the one
with fewer requests in flight ("power of two choices").

Facts (invalid key, rate limit, no quota, no model) come from outcomes and from the store; the
store's cooldowns only ever move a local deadline later. Statistical ejections (5xx, timeouts)
stay in this process, as in Envoy: a 5xx status read back from the store restricts nothing.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Collection, Iterable, KeysView

from llmgateway.core.key_states import KEY_LEVEL, KeyState
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool_keys import (
    Bag,
    Key,
    KeyEntry,
    Lease,
    OutlierConfig,
    Scope,
    Scoped,
    Selection,
    StatusChange,
    Unavailable,
    better_of_two,
    place,
    state_of,
    unavailable,
    unpark,
    usable,
)

_SAMPLES = 8  # random draws before falling back to a scan of the scope's bag


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
        serve_untested: bool = True,
    ) -> None:
        """`serve_untested`: may a key serve a scope before anything is known about it there
        (False: only once a probe or a request found it, `serve_untested_keys: false`)."""
        self.provider = provider
        self._shared = shared
        self._models = tuple(models)
        self._selection = selection
        self._outlier = outlier
        self._rng = rng
        self._keys: dict[int, Key] = {}
        names = (ALL_MODELS,) if shared else self._models
        self._scopes: dict[str, Scope] = {
            name: Scope(name, Bag("ready_at" if index == 0 else None), untested_ok=serve_untested)
            for index, name in enumerate(names)
        }
        self._ejected = Bag("ejected_at")
        self._ejections: list[tuple[float, int]] = []  # (ejected_until, key_id) heap
        self._leases: dict[int, Key] = {}
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
            key = self._keys[entry.key_id] = Key(entry.key_id, entry.secret, entry.egress)
        else:
            key.secret, key.egress = entry.secret, entry.egress
        name = entry.model
        if name not in self._scopes:  # the other mode's row, or a model not configured here
            if fresh:
                self._place_everywhere(key, now)
            return
        was_invalid = bool(key.invalid_in)
        changed = key.take_status(name, entry.status, entry.cooldown_until)
        unejected = entry.status is KeyStatus.VALID and changed and key.ejected_until > now
        if unejected:  # a probe passed: un-eject and forget the failures (Envoy does the same)
            key.ejected_until, key.failures = now, 0
            self._ejected.discard(key)
        if fresh or unejected or was_invalid != bool(key.invalid_in):
            self._place_everywhere(key, now)
        else:
            place(key, self._scopes[name], now)

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
        unpark(scope, self._keys, now)
        if self._selection is Selection.ROUND_ROBIN:
            key = self._round_robin(scope, now, exclude)
        else:
            key = self._two_choices(scope, now, exclude)
        if key is None:
            key = self._panic(scope, now, exclude)
            if key is None:
                return unavailable(scope, self._keys, self._ejections, now)
        key.inflight += 1
        self._last_lease += 1
        self._leases[self._last_lease] = key
        return Lease(self._last_lease, key.key_id, key.secret, key.egress, scope.name)

    def ready(self, model: str, now: float) -> bool:
        """Whether a key may serve `model` now, as far as the pool's bag of eligible keys says
        (O(1) amortised: no key is looked at one by one). A key whose state changed unseen may
        still be in the bag; `acquire` then finds none, without an upstream call."""
        scope = self._scopes.get(ALL_MODELS if self._shared else model)
        if scope is None:
            return False
        if scope.ready.items:  # the usual answer: what follows only ever adds to the bag
            return True
        self._expire(now)
        unpark(scope, self._keys, now)
        return bool(scope.ready.items)

    def why_not(self, model: str, now: float) -> Unavailable:
        """Why no key may serve `model` now, and for how long as far as known."""
        scope = self._scopes.get(self.scope(model))
        if scope is None:
            return Unavailable("no_keys", None)
        return unavailable(scope, self._keys, self._ejections, now)

    def _fits(self, key: Key, scope: Scope, now: float, exclude: Collection[int]) -> bool:
        if key.key_id in exclude:
            return False
        if usable(key, scope.name, now, untested_ok=scope.untested_ok):
            return True
        place(key, scope, now)  # its state changed since it joined the bag
        return False

    def _two_choices(self, scope: Scope, now: float, exclude: Collection[int]) -> Key | None:
        items = scope.ready.items
        if len(items) <= _SAMPLES:
            return self._scan(scope, now, exclude)
        rand = self._rng.random
        first: Key | None = None
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

    def _scan(self, scope: Scope, now: float, exclude: Collection[int]) -> Key | None:
        found = [key for key in list(scope.ready.items) if self._fits(key, scope, now, exclude)]
        return better_of_two(found, self._rng)

    def _round_robin(self, scope: Scope, now: float, exclude: Collection[int]) -> Key | None:
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

    def _panic(self, scope: Scope, now: float, exclude: Collection[int]) -> Key | None:
        """Nothing eligible: if ejections alone are why, ignore them rather than fail (Envoy)."""
        found = [
            key
            for key in self._ejected.items
            if key.key_id not in exclude
            and usable(key, scope.name, now, ejected_ok=True, untested_ok=scope.untested_ok)
        ]
        return better_of_two(found, self._rng)

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
            return self._succeeded(key, lease.scope, outcome, now)
        if outcome.blame is Blame.KEY and outcome.reason in _KEY_FAULTS:
            return self._key_fault(key, lease.scope, outcome, now)
        if outcome.blame in (Blame.KEY, Blame.PROVIDER):
            return self._provider_fault(key, lease.scope, outcome, now)
        return None  # CLIENT, NOBODY and EGRESS: never the key's doing

    def _succeeded(self, key: Key, name: str, outcome: Outcome, now: float) -> StatusChange | None:
        key.failures = 0
        st = key.scoped(name)
        if st is None:
            return None  # a model outside the config has no durable row
        st.rate_limits = 0
        if st.status is KeyStatus.VALID or not usable(key, name, now, ejected_ok=True):
            return None  # already known, or a fact learnt since this lease began stands
        st.status = KeyStatus.VALID
        return StatusChange(key.key_id, name, KeyStatus.VALID, None, None, outcome.status)

    def _key_fault(self, key: Key, name: str, outcome: Outcome, now: float) -> StatusChange | None:
        reason = outcome.reason
        assert reason is not None
        status = KeyStatus(reason.value)
        if reason is ErrorReason.NO_MODEL and self._shared:
            return None  # one missing model says nothing about a shared key
        st = key.scoped(name)
        if st is None:
            st = key.put(name, Scoped(KeyStatus.UNTESTED))
        until: float | None = None
        if status in KEY_LEVEL:
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
        if status in KEY_LEVEL:
            for scope in self._scopes.values():
                scope.ready.discard(key)
        else:
            place(key, self._scopes[name], now)
        return StatusChange(key.key_id, name, status, reason, until, outcome.status)

    def _provider_fault(
        self, key: Key, name: str, outcome: Outcome, now: float
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

    def _place_everywhere(self, key: Key, now: float) -> None:
        for scope in self._scopes.values():
            place(key, scope, now)

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

    def state(self, key_id: int, model: str, now: float) -> KeyState | None:
        """What one key is for `model` at `now` (None for an unknown key)."""
        key = self._keys.get(key_id)
        return None if key is None else state_of(key, self.scope(model), now)

    def counts(self, now: float) -> dict[tuple[str, KeyState], int]:
        """Keys by (scope, state), for metrics and `status`; O(keys × scopes)."""
        tally: Counter[tuple[str, KeyState]] = Counter()
        for name in self._scopes:
            for key in self._keys.values():
                tally[(name, state_of(key, name, now))] += 1
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
