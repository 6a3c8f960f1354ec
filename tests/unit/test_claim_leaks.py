"""Nothing a request takes outlives it: an exception (our own bug, or a cancellation) injected at
every step between taking a key and the client having its answer leaves no key leased, no
half-open trial slot taken, no retry-budget or per-key limit slot held and no upstream response
open, and gives nothing back twice.

Each step is tried on the request's first attempt and on its second (after a retry, so a retry
slot of the budget is held too), with a client SDK retry's budget slot held throughout, and the
provider's and its egress's breakers half-open (one trial slot each). A `Ledger` counts what
the guard admitted and the pool leased, less what was given back: below zero is a double
release."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from tests.unit.loop_rig import (
    COMPLETION,
    EVENTS,
    HALF_OPEN_BREAKER,
    JSON,
    NOTHING_HELD,
    SSE,
    Rig,
    half_open,
    make_rig,
)

from llmgateway.conductor import attempts
from llmgateway.core.pool_keys import Lease
from llmgateway.limits import KeyLimiter, LocalBackend
from llmgateway.observe import logs
from llmgateway.testing.memory_upstream import MemoryUpstream, ScriptedResponse

BUSY = ScriptedResponse(503, JSON, b'{"error":{"message":"overloaded"}}')
# the key's fault: the half-open breakers let the request retry on another key
LIMITED = ScriptedResponse(
    429,
    {**JSON, "retry-after": "1"},
    b'{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}',
)
WHOLE = ScriptedResponse(200, JSON, COMPLETION)
STREAM = ScriptedResponse(200, SSE, list(EVENTS))


@dataclass(slots=True)
class Fault:
    """Raises `error` once, the first time it is called after the loop paused `after` times
    for a retry."""

    rig: Rig
    error: type[BaseException]
    after: int
    fired: int = 0
    requests: int | None = None  # when the upstream strikes: the requests it takes

    def __call__(self) -> None:
        if self.fired == 0 and len(self.rig.pauses) >= self.after:
            self.fired += 1
            raise self.error("injected")


@dataclass(slots=True)
class Ledger:
    """Admissions and leases taken less those given back (see the module docstring)."""

    provider: int = 0
    egress: int = 0
    leases: int = 0

    def watch(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        guard, pool = rig.provider.guard, rig.provider.pool
        admit, egress_blocked = guard.admit, guard.egress_blocked
        judge, forget = guard.judge, guard.forget
        acquire, release = pool.acquire, pool.release

        def admitted(now: float) -> Any:
            closed = admit(now)
            self.provider += closed is None
            return closed

        def egress_admitted(egress: str, now: float) -> Any:
            closed = egress_blocked(egress, now)
            self.egress += closed is None
            return closed

        def judged(egress: str, *args: Any) -> Any:
            self.provider -= 1
            self.egress -= 1
            return judge(egress, *args)

        def forgotten(egress: str | None, now: float) -> None:
            self.provider -= 1
            self.egress -= egress is not None
            forget(egress, now)

        def leased(*args: Any) -> Any:
            got = acquire(*args)
            self.leases += isinstance(got, Lease)
            return got

        def released(*args: Any) -> Any:
            self.leases -= 1
            return release(*args)

        monkeypatch.setattr(guard, "admit", admitted)
        monkeypatch.setattr(guard, "egress_blocked", egress_admitted)
        monkeypatch.setattr(guard, "judge", judged)
        monkeypatch.setattr(guard, "forget", forgotten)
        monkeypatch.setattr(pool, "acquire", leased)
        monkeypatch.setattr(pool, "release", released)


Install = Callable[[Rig, pytest.MonkeyPatch, Fault], None]


def _on(target: object, name: str) -> Install:
    """The fault strikes as `target.name` (a function, or a method of the provider's guard
    when `target` is None) is called."""

    def install(rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
        owner = rig.provider.guard if target is None else target
        original = getattr(owner, name)

        def struck(*args: Any, **kwargs: Any) -> Any:
            fault()
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, struck)

    return install


def _on_limiter(rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    original = KeyLimiter.acquire

    async def acquire(self: KeyLimiter, lease: Lease, amount: int = 0) -> Any:
        fault()
        return await original(self, lease, amount)

    monkeypatch.setattr(KeyLimiter, "acquire", acquire)


def _on_pause(rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    async def pause(seconds: float) -> None:
        fault()

    fault.after += 1  # the pause is recorded before the hook runs
    rig.pause_hook = pause


def _in_upstream(answer: Callable[[BaseException], ScriptedResponse | BaseException]) -> Install:
    """The fault is in the upstream's answer to the attempt: `answer(error)` (an exception:
    raised instead of answering)."""

    def install(rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
        fault.fired, fault.requests = 1, fault.after + 1  # struck by the upstream
        faulty = answer(fault.error("injected"))
        rig.upstream.handler = MemoryUpstream.answering(*[LIMITED] * fault.after, faulty).handler

    return install


def _at_client(kind: str) -> Install:
    """The client's connection fails as the edge sends it a message of `kind`."""

    def install(rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
        async def client(message: dict[str, Any]) -> None:
            if message["type"] == kind:
                fault()

        rig.client = client

    return install


def _plain(length: int, *parts: bytes | BaseException) -> ScriptedResponse:
    return ScriptedResponse(200, {**JSON, "content-length": str(length)}, list(parts))


STEPS: dict[str, tuple[ScriptedResponse, Install]] = {
    # the key taken, then the guard told which egress it leaves through
    "lease taken": (WHOLE, _on(None, "note")),
    "guard noted": (WHOLE, _on(None, "egress_blocked")),
    "key limiter": (WHOLE, _on_limiter),
    "request built": (WHOLE, _on(logs, "bind_attempt")),
    "upstream send": (WHOLE, _in_upstream(lambda error: error)),
    "headers received": (WHOLE, _on(attempts, "_read_whole")),
    "first byte (read whole)": (WHOLE, _in_upstream(lambda error: _plain(9, error))),
    "body read (read whole)": (WHOLE, _in_upstream(lambda error: _plain(99, b"{", error))),
    "first byte (streamed)": (WHOLE, _in_upstream(lambda e: ScriptedResponse(200, SSE, [e]))),
    "body read (streamed)": (
        WHOLE,
        _in_upstream(lambda error: ScriptedResponse(200, SSE, [EVENTS[0], error])),
    ),
    "error body read": (
        BUSY,
        _in_upstream(lambda error: ScriptedResponse(503, JSON, [b'{"error"', error])),
    ),
    "classify": (BUSY, _on(attempts, "classify_exchange")),
    "accounted (failed)": (BUSY, _on(logs, "bind_outcome")),
    "accounted (streamed)": (STREAM, _on(logs, "bind_outcome")),
    "reply built": (BUSY, _on(attempts, "failed_attempt")),
    "retry pause": (LIMITED, _on_pause),
    "client sent the head (reply)": (BUSY, _at_client("http.response.start")),
    "client sent the head (whole)": (WHOLE, _at_client("http.response.start")),
    "client sent the head (streamed)": (STREAM, _at_client("http.response.start")),
    "client sent the body (whole)": (WHOLE, _at_client("http.response.body")),
    "client sent the body (streamed)": (STREAM, _at_client("http.response.body")),
}


@pytest.mark.parametrize("error", [RuntimeError, asyncio.CancelledError])
@pytest.mark.parametrize("attempt", [1, 2])
@pytest.mark.parametrize("step", list(STEPS))
async def test_nothing_leaks_whatever_step_fails(
    step: str, attempt: int, error: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer, install = STEPS[step]
    script = [LIMITED] * (attempt - 1) + [answer, LIMITED, BUSY]
    rig = make_rig(
        MemoryUpstream.answering(*script),
        circuit_breaker=HALF_OPEN_BREAKER,
        key_limits={"max_concurrent": 5, "tpm": 10**9},
        retry={
            "on_key_error": {"attempts": 3, "backoff_sec": 0.01},
            "on_server_error": {"attempts": 3, "backoff_sec": 0.01},
        },
        retry_budget={"percent": 0, "min_concurrent": 2},
    )
    half_open(rig)
    ledger = Ledger()
    ledger.watch(rig, monkeypatch)
    fault = Fault(rig, error, after=attempt - 1)
    install(rig, monkeypatch, fault)
    with contextlib.suppress(RuntimeError, asyncio.CancelledError):
        await rig.send(headers=[("x-stainless-retry-count", "1")])
    assert fault.fired == 1, "the fault was never reached"
    if fault.requests is not None:
        assert len(rig.upstream.requests) == fault.requests
    assert (ledger.provider, ledger.egress, ledger.leases) == (0, 0, 0)
    rig.clock.advance(60.0)  # a breaker the request's outcome re-opened is half-open again
    assert rig.leaks() == NOTHING_HELD
    limiter = rig.provider.limiter
    assert limiter is not None
    assert isinstance(limiter.backend, LocalBackend)
    assert limiter.backend.counts.unsettled() == 0  # every tpm reservation settled
