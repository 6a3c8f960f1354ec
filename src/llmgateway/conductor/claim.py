"""One owner per request: the `Claim` holds what a request takes from its provider, and gives
it all back, once.

A request takes its place in the provider's retry budget (and a slot for a client SDK's own
retry); for each attempt the guard's admission (the provider breaker's, then the egress
breaker's: in half-open, a trial slot each), a key's lease from the pool with its per-key limit
slot, and the upstream's response; at its first retry of ours, a retry slot of the budget. Each
is recorded on the claim as it is taken, with no step in between, and only the claim gives it
back:

- a failed attempt is settled before the next one (`settle`: judged, its lease released with
  what the pool should learn, its response closed); a key the loop does not use goes back
  neutrally (`put_back`);
- an answer relayed to the client keeps its lease and response (and, when its body was read
  whole, its admission: judged once the client has it) until the relay ends; the retry slots
  go back as soon as the attempt loop is done (`retries_over`), so a relay holds none;
- `end`, which the edge calls in its `finally` however the request went (answered, refused,
  our own bug, cancelled, the client gone), gives back whatever is still held: a relayed
  answer's key learns how the relay ended, an attempt still in flight ends neutrally (nothing
  is learnt about its key). What was given back is no longer held, so a second `end` is a
  no-op, never a second release.

Taking and giving back cost what they did before the claim (no await, one object per request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from llmgateway.conductor.call import Call
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.conductor.usage_writer import UsageWriter
from llmgateway.core.guard import Blocked, Excluded
from llmgateway.core.outcomes import Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool_keys import Lease, Unavailable
from llmgateway.observe import debug, logs
from llmgateway.observe.metrics import Metrics
from llmgateway.transport.upstream import UpstreamResponse

# A lease given up because the client went away or the gateway cancelled: nobody is to blame.
CANCELLED = Outcome(reason=ErrorReason.UNKNOWN, blame=Blame.NOBODY)


class Reporting(Protocol):
    """Where a claim reports what its request learnt: the clock it reads, the metrics, the
    status write-behind and the usage counts (the `AttemptLoop` is one)."""

    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def writer(self) -> StatusWriter: ...
    @property
    def usage(self) -> UsageWriter | None: ...


class Claim:
    """What one client request holds of its provider (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_client_retry",
        "_counted",
        "_egress",
        "_loop",
        "_relaying",
        "_retrying",
        "_verdict",
        "call",
        "lease",
        "response",
    )

    def __init__(self, call: Call, loop: Reporting) -> None:
        self.call = call
        self._loop = loop
        self.lease: Lease | None = None  # the current attempt's key
        self.response: UpstreamResponse | None = None  # the current attempt's response
        self._admitted = False  # the guard admitted the current attempt (the provider breaker)
        self._egress: str | None = None  # ... and its egress (the egress breaker)
        self._relaying = False  # the current attempt's answer goes to the client
        self._verdict: Outcome | None = None  # a body read whole: judged once relayed
        self._retrying = False  # holds a retry slot of the budget
        budget = call.provider.budget
        budget.request_started()
        self._counted = True
        # a client's own SDK retry takes a slot of the budget, and ours need one of their own
        self._client_retry = call.client_retry
        if call.client_retry:
            budget.begin_client_retry()

    # -- an attempt -------------------------------------------------------------------------------

    def take(self, excluded: Excluded) -> Lease | Unavailable | Blocked:
        """A key whose provider and egress are open, leased and admitted; or why there is
        none (then nothing is held)."""
        provider = self.call.provider
        guard, pool = provider.guard, provider.pool
        now = excluded.now = self._loop.clock()
        closed = guard.admit(now)
        if closed is not None:
            return closed
        self._admitted = True
        blocked: Blocked | None = None
        while True:
            got = pool.acquire(self.call.model, now, excluded)
            if isinstance(got, Unavailable):
                self._admitted = False
                guard.forget(None, now)
                return blocked if blocked is not None else got
            self.lease = got
            guard.note(got.key_id, got.egress)
            if got.egress in excluded.egresses:
                shut: Blocked | None = Blocked("egress_open", 1.0)
            else:
                shut = guard.egress_blocked(got.egress, now)
            if shut is None:
                self._egress = got.egress
                return got
            self.lease = None
            pool.release(got, CANCELLED, now)
            excluded.skipped.add(got.key_id)
            if blocked is None or shut.retry_after < blocked.retry_after:
                blocked = shut

    def put_back(self, excluded: Excluded) -> None:
        """The current key goes back unused (its per-key limit refused it), neutrally, and is
        not offered again within this request."""
        if self.lease is not None:
            excluded.skipped.add(self.lease.key_id)
        self._let_go(CANCELLED)

    def settle(self, outcome: Outcome) -> None:
        """The current attempt failed with `outcome`: the guard judges it, the key's pool
        learns what the guard says it should, the response is closed."""
        self._let_go(self._judge(outcome))

    def relay(self, ok: Outcome, *, whole: bool) -> None:
        """The current attempt's answer (a success) goes to the client: a streamed one is judged
        now, one read `whole` once the client has it (`end`), off the request's path."""
        self._relaying = True
        if whole:
            self._verdict = ok
        else:
            self._judge(ok)

    def observed(self, outcome: Outcome, headers: Mapping[str, str], body: bytes | None) -> None:
        """Account for the current attempt: its metric, the log context, the debug log."""
        provider, lease = self.call.provider, self.lease
        assert lease is not None
        self._loop.metrics.for_provider(provider.name).attempt(outcome)
        logs.bind_outcome(outcome)
        mode = provider.settings.gateway_policy.debug_mode
        debug.response(mode, outcome.status, headers, body, lease.secret)

    # -- retries ----------------------------------------------------------------------------------

    def may_retry(self) -> bool:
        """Whether this request may retry now: it holds a slot of the retry budget already
        (one serves all its retries), or it takes a free one."""
        if not self._retrying:
            self._retrying = self.call.provider.budget.try_begin_retry()
        return self._retrying

    def retries_over(self) -> None:
        """The attempt loop is done: the budget's retry slots (ours and a client's own retry)
        go back."""
        budget = self.call.provider.budget
        if self._retrying:
            self._retrying = False
            budget.end_retry()
        if self._client_retry:
            self._client_retry = False
            budget.end_retry()

    # -- the end ----------------------------------------------------------------------------------

    def end(self, outcome: Outcome) -> None:
        """The request is over: give back whatever is still held. A relayed answer's key learns
        how the relay ended (`outcome`, as the guard sees it); an attempt still in flight ends
        neutrally, whatever `outcome` says."""
        learnt = CANCELLED
        used: int | None = 0  # the tokens the key's reservation settles at: none without answer
        try:
            if self._relaying:
                self._relaying = False
                used = self.call.used
                learnt = self._relay_ended(outcome)
        finally:
            try:
                self._let_go(learnt, used)
            finally:
                if self._retrying or self._client_retry:
                    self.retries_over()
                if self._counted:
                    self._counted = False
                    self.call.provider.budget.request_finished()

    def _relay_ended(self, outcome: Outcome) -> Outcome:
        lease, response = self.lease, self.response
        assert lease is not None
        assert response is not None
        verdict, self._verdict = self._verdict, None
        if verdict is not None:  # a body read whole: judged now that the client has it
            self._judge(verdict)
            self.observed(verdict, response.headers, None)
        return self.call.provider.guard.judge_end(lease.egress, outcome)

    def _judge(self, outcome: Outcome) -> Outcome:
        """The guard's admission of the current attempt ends with `outcome`; returns what the
        key's pool should learn."""
        lease = self.lease
        assert lease is not None
        assert self._admitted
        self._admitted, self._egress = False, None
        return self.call.provider.guard.judge(
            lease.egress, lease.key_id, outcome, self._loop.clock()
        )

    def _let_go(self, outcome: Outcome, used: int | None = 0) -> None:
        """Give back the current attempt's response, its admission (neutrally: it was not
        judged) and its lease (the pool learning `outcome`, its tokens-per-minute reservation
        settling at `used`), whichever are held."""
        response, self.response = self.response, None
        if response is not None:
            response.close()
        if self.lease is None and not self._admitted:
            return
        provider, loop = self.call.provider, self._loop
        now = loop.clock()
        if self._admitted:
            egress, self._admitted, self._egress = self._egress, False, None
            provider.guard.forget(egress, now)
        lease, self.lease = self.lease, None
        if lease is not None:
            if provider.limiter is not None:  # a slot it never got is ignored
                provider.limiter.release(lease, used)
            usage = loop.usage
            if usage is not None and outcome is not CANCELLED:
                failed = not outcome.ok and outcome.blame is not Blame.CLIENT
                usage.count(provider.name, lease.key_id, lease.scope, failed, now)
            change = provider.pool.release(lease, outcome, now)
            if change is not None:
                if change.status is not KeyStatus.VALID:
                    reason = change.reason.value if change.reason else change.status.value
                    loop.metrics.for_provider(provider.name).cooldown(reason)
                loop.writer.offer(provider.name, change, now)
