"""A gateway's request path in memory, for unit tests of the attempt loop and its edge.

`make_rig` wires one `openai_like` provider the way `create_app` does (`Conductor`), with its
keys loaded straight into the pool, an `AttemptLoop` on a `MemoryUpstream`, and the `Edge`
called as the raw ASGI handler it is: no server, no socket, no store. The wall clock of the
pool and the guard is the test's (`Rig.clock`); the loop's pauses before a retry are recorded
in `Rig.pauses`, not slept. `Rig.leaks()` says what a request still holds once it is over.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from tests.helpers import ManualClock

from llmgateway.conductor.admission import BodyBudget, BodyLimits
from llmgateway.conductor.app import Conductor
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.call import Provider
from llmgateway.conductor.edge import BODY_ARRIVED, ON_DISCONNECT
from llmgateway.conductor.endpoints import Edge
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.config.settings import Settings
from llmgateway.core.egress import DIRECT
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool_keys import KeyEntry
from llmgateway.core.resilience import BreakerState
from llmgateway.limits import Limits
from llmgateway.observe.access import AccessLog, TokenRefusals
from llmgateway.observe.metrics import Metrics
from llmgateway.testing.memory_upstream import Handler, MemoryUpstream

TOKEN = "gw-unit-loop-token-0001"
KEYS = ("sk-unit-loop-key-000001", "sk-unit-loop-key-000002", "sk-unit-loop-key-000003")
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
COMPLETION = b'{"id":"c-1","object":"chat.completion","choices":[]}'
EVENTS = (b'data: {"id":"c-1","choices":[]}\n\n', b"data: [DONE]\n\n")


def loop_settings(gateway: dict[str, Any] | None = None, **policy: Any) -> Settings:
    """One `openai_like` provider `openai` (shared key status), its policy `policy` over a
    default with retries on and no breaker (`timeouts` may be given among `policy`), and the
    `gateway` section."""
    timeouts = policy.pop("timeouts", {"connect": 1.0, "read": 5.0, "total": 30.0})
    base: dict[str, Any] = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 3, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 2, "backoff_sec": 0.0},
        },
        "circuit_breaker": {"enabled": False},
        "retry_budget": {"percent": 20, "min_concurrent": 3},
        "outlier_detection": {"consecutive_failures": 5, "jitter_percent": 0},
    }
    base.update(policy)
    provider = {
        "provider_type": "openai_like",
        "keys_path": "/nonexistent/keys",
        "api_base_url": "https://upstream.test/v1",
        "default_model": "gpt-4o-mini",
        "shared_key_status": True,
        "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": TOKEN},
        "gateway_policy": base,
        "timeouts": timeouts,
    }
    return Settings.model_validate({"gateway": gateway or {}, "providers": {"openai": provider}})


NOTHING_HELD = {  # what `Rig.leaks()` is once no request is in flight
    "leased": 0,
    "budget_active": 0,
    "budget_retries": 0,
    "limiter": 0,
    "responses_open": 0,
    "trials_held": 0,
}


@dataclass(slots=True)
class Exchange:
    """What the client got: the ASGI messages the edge sent, read back."""

    messages: list[dict[str, Any]]

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        if not starts:
            return {}
        return {k.decode(): v.decode() for k, v in starts[0]["headers"]}

    @property
    def body(self) -> bytes:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return b"".join(m.get("body", b"") for m in bodies)

    @property
    def complete(self) -> bool:
        """Whether the response was ended (`more_body` false on its last message)."""
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False)


Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Rig:
    """One provider's request path in memory (see the module docstring)."""

    conductor: Conductor
    provider: Provider
    upstream: MemoryUpstream
    attempt_loop: AttemptLoop
    edge: Edge
    clock: ManualClock
    key_ids: dict[str, int]
    pauses: list[float] = field(default_factory=list)
    pause_hook: Callable[[float], Awaitable[None]] | None = None
    client: Send | None = None  # the default `client` of `send`
    scopes: list[dict[str, Any]] = field(default_factory=list)

    async def pause(self, seconds: float) -> None:
        """The attempt loop's pause before a retry: recorded, then `pause_hook` if set."""
        self.pauses.append(seconds)
        if self.pause_hook is not None:
            await self.pause_hook(seconds)

    async def send(
        self,
        body: bytes = CHAT,
        headers: Iterable[tuple[str, str]] = (),
        *,
        path: bytes = b"/v1/chat/completions",
        client: Send | None = None,
    ) -> Exchange:
        """One request through the edge; `client` receives the edge's messages (after they
        are recorded) and may raise, as a failing client connection would."""
        raw = [(b"authorization", f"Bearer {TOKEN}".encode())]
        raw += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(name.encode(), value.encode()) for name, value in headers]
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": path.decode(),
            "raw_path": path,
            "query_string": b"",
            "headers": raw,
            BODY_ARRIVED: True,
        }
        self.scopes.append(scope)
        exchange = Exchange([])
        client = client or self.client

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            exchange.messages.append(message)
            if client is not None:
                await client(message)

        await self.edge(scope, receive, send)  # type: ignore[arg-type]
        return exchange

    def disconnect(self) -> None:
        """The client of the latest request goes away (as the server's protocol tells it)."""
        told = self.scopes[-1].get(ON_DISCONNECT)
        assert callable(told), "no request is being served"
        told()

    def key_of(self, secret: str) -> int:
        return self.key_ids[secret]

    def state(self, secret: str) -> str | None:
        """The pool's state of a key now (`healthy`, `ejected`, `cooling`…)."""
        return self.provider.pool.state(self.key_of(secret), ALL_MODELS, self.clock())

    def leaks(self) -> dict[str, int]:
        """What must be 0 once no request is in flight: keys leased, retry-budget requests and
        slots, per-key limit slots, responses open, half-open trial slots taken (1 when one
        breaker's trial is held)."""
        provider = self.provider
        pool, budget = provider.pool, provider.budget
        limited = 0
        if provider.limiter is not None:
            counts = getattr(provider.limiter.backend, "counts", None)
            if counts is not None:
                limited = sum(
                    counts.inflight(("openai", key, ALL_MODELS)) for key in pool.key_ids()
                )
        return {
            "leased": sum(pool.inflight(key) for key in pool.key_ids()),
            "budget_active": budget.active,
            "budget_retries": budget.retries,
            "limiter": limited,
            "responses_open": self.upstream.open_connections(),
            "trials_held": trials_held(self),
        }


def trials_held(rig: Rig) -> int:
    """1 when a half-open breaker (the provider's, or direct egress's) has no trial slot free:
    tried with a whole admission (admit, egress, then forgotten), as the attempt loop makes."""
    guard, now = rig.provider.guard, rig.clock()
    if guard.admit(now) is not None:
        return 1
    if guard.egress_blocked(DIRECT, now) is not None:
        guard.forget(None, now)
        return 1
    guard.forget(DIRECT, now)
    return 0


PROVIDER_DOWN = Outcome(ErrorReason.SERVICE_UNAVAILABLE, Blame.PROVIDER, 503)
EGRESS_DOWN = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)


def half_open(rig: Rig, egress: str = DIRECT) -> None:
    """Open the provider's breaker and `egress`'s (threshold 1), then let their open time
    pass: the next admission of each takes its one trial slot."""
    guard, now = rig.provider.guard, rig.clock()
    assert guard.admit(now) is None
    assert guard.egress_blocked(egress, now) is None
    guard.judge(egress, 0, EGRESS_DOWN, now)
    assert guard.admit(now) is None
    guard.forget(None, now)
    assert guard.egress_blocked(egress, now) is not None  # open
    guard.judge(egress, 0, PROVIDER_DOWN, now)  # the provider: open too
    assert guard.state is BreakerState.OPEN
    rig.clock.advance(60.0)


HALF_OPEN_BREAKER = {
    "enabled": True,
    "failure_threshold": 1,
    "backoff": {"base_duration_sec": 10, "max_duration_sec": 10, "factor": 2},
    "jitter_sec": 0,
    "trial_calls": 1,
}
"""A breaker that opens at one provider-side failure and allows one trial call when half-open."""


def make_rig(
    upstream: Handler | MemoryUpstream,
    keys: Sequence[str] = KEYS,
    *,
    egresses: Sequence[str] | None = None,
    gateway: dict[str, Any] | None = None,
    **policy: Any,
) -> Rig:
    """The rig on `upstream` (or a `MemoryUpstream` on that handler) with `keys` in the pool
    (egress `egresses[i]` for key i, else direct) and `policy` over `loop_settings`' default."""
    settings = loop_settings(gateway, **policy)
    clock = ManualClock()
    conductor = Conductor(settings, rng=random.Random(7), clock=clock)
    metrics = Metrics.create()
    conductor.limits = Limits.create(settings, metrics, clock)
    conductor.build_providers()
    provider = conductor.providers["openai"]
    key_ids = {secret: index + 1 for index, secret in enumerate(keys)}
    entries = [
        KeyEntry(
            key_ids[secret],
            secret,
            ALL_MODELS,
            KeyStatus.VALID,
            None,
            egresses[index] if egresses else DIRECT,
        )
        for index, secret in enumerate(keys)
    ]
    provider.pool.load(entries, clock())
    provider.secrets.add(set(keys))
    if not isinstance(upstream, MemoryUpstream):
        upstream = MemoryUpstream(upstream)

    async def write(events: object) -> None:
        return None

    attempt_loop = AttemptLoop(upstream, StatusWriter(write), conductor.rng, clock, metrics)
    edge = Edge(
        attempt_loop,
        conductor.token_index(),
        BodyLimits(1024 * 1024, 5.0),
        BodyBudget(64 * 1024 * 1024),
        AccessLog(),
        TokenRefusals(metrics.auth_failed),
    )
    rig = Rig(conductor, provider, upstream, attempt_loop, edge, clock, key_ids)
    attempt_loop.sleep = rig.pause  # recorded, not slept
    return rig
