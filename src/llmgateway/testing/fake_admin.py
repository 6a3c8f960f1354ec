"""The fake upstream's admin API (`/_fake/…`): how tests in another process, benchmarks and
`llmgateway fake-upstream` set behaviours and outages, and read the counters (keys masked)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

import orjson
import pydantic
from aiohttp import web

from llmgateway.observe.masking import fingerprint, mask
from llmgateway.testing.fake_answers import json_object
from llmgateway.testing.faults import BEHAVIOR_ADAPTER, BEHAVIOR_FIELDS, Behavior


class Driven(Protocol):
    """What the admin API drives and reads of the fake (`FakeUpstream` is one)."""

    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def outage_status(self) -> int | None: ...
    @property
    def key_in_url(self) -> int: ...
    @property
    def open_requests(self) -> int: ...
    @property
    def peak_open_requests(self) -> int: ...
    def calls_by_key(self) -> dict[str, int]: ...
    def set_behavior(self, secret: str, behavior: Behavior | None) -> None: ...
    def set_outage(self, status: int = 503, seconds: float | None = None) -> None: ...
    def set_missing_models(self, models: Iterable[str]) -> None: ...
    def set_context_limits(self, limits: Mapping[str, int]) -> None: ...
    def clear_outage(self) -> None: ...
    def reset(self) -> None: ...


def admin_routes(fake: Driven) -> list[web.RouteDef]:
    """The `/_fake/…` routes that drive `fake`."""

    async def behaviors(request: web.Request) -> web.Response:
        """`{"<secret>": {<Behavior fields>} | null, ...}`; `rate_limit_for_sec` sets a deadline
        relative to now."""
        document = json_object(await request.read())
        if document is None:
            return _admin_error("expected a JSON object: {secret: {behavior fields} | null}")
        parsed: dict[str, Behavior | None] = {}
        for secret, spec in document.items():
            if spec is None:
                parsed[secret] = None
                continue
            behavior = _parse_behavior(spec, fake.clock)
            if isinstance(behavior, str):
                return _admin_error(f"behavior for {mask(secret)}: {behavior}")
            parsed[secret] = behavior
        for secret, chosen in parsed.items():
            fake.set_behavior(secret, chosen)
        return web.json_response({"ok": True, "keys": len(parsed)})

    async def stats(request: web.Request) -> web.Response:
        calls = fake.calls_by_key()
        outage = fake.outage_status
        found = {
            "calls": {mask(secret): n for secret, n in calls.items()},
            "calls_by_fingerprint": {fingerprint(secret): n for secret, n in calls.items()},
            "total_calls": sum(calls.values()),
            "key_in_url": fake.key_in_url,
            "open_requests": fake.open_requests,
            "peak_open_requests": fake.peak_open_requests,
            "outage": None if outage is None else {"status": outage},
        }
        return web.json_response(found, dumps=lambda v: orjson.dumps(v).decode())

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return web.json_response({"ok": True})

    async def outage(request: web.Request) -> web.Response:
        """`{"status": 503, "seconds": 10}` starts an outage (no seconds: until cleared);
        `{"status": null}` or `{}` clears it."""
        document = json_object(await request.read())
        if document is None:
            return _admin_error('expected a JSON object like {"status": 503, "seconds": 10}')
        status, seconds = document.get("status"), document.get("seconds")
        if status is None:
            fake.clear_outage()
            return web.json_response({"ok": True, "outage": None})
        valid_seconds = seconds is None or (
            isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0
        )
        if not isinstance(status, int) or not 400 <= status <= 599 or not valid_seconds:
            return _admin_error("status must be an HTTP error code (400-599), seconds >= 0")
        fake.set_outage(status, None if seconds is None else float(seconds))
        return web.json_response({"ok": True, "outage": {"status": status}})

    async def models(request: web.Request) -> web.Response:
        """`{"missing": ["gpt-4o"], "context_limits": {"gpt-4o-mini": 2048}}`: the models every
        key is told do not exist, and the most request-body bytes per model (both replaced)."""
        document = json_object(await request.read())
        missing = document.get("missing", []) if document is not None else None
        limits = document.get("context_limits", {}) if document is not None else None
        if not (isinstance(missing, list) and all(isinstance(m, str) for m in missing)):
            return _admin_error('expected {"missing": [model, ...], "context_limits": {...}}')
        if not isinstance(limits, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in limits.values()
        ):
            return _admin_error("context_limits: {model: bytes >= 0}")
        fake.set_missing_models(missing)
        fake.set_context_limits(limits)
        return web.json_response({"ok": True})

    return [
        web.post("/_fake/behaviors", behaviors),
        web.post("/_fake/models", models),
        web.get("/_fake/stats", stats),
        web.post("/_fake/reset", reset),
        web.post("/_fake/outage", outage),
    ]


def _parse_behavior(spec: Any, clock: Callable[[], float]) -> Behavior | str:
    if not isinstance(spec, dict):
        return "expected an object of behavior fields"
    spec = dict(spec)
    relative = spec.pop("rate_limit_for_sec", None)
    unknown = sorted(set(spec) - BEHAVIOR_FIELDS)
    if unknown:
        return f"unknown field(s) {unknown}; known: {sorted(BEHAVIOR_FIELDS)}"
    try:
        behavior = BEHAVIOR_ADAPTER.validate_python(spec)
        if relative is not None:
            seconds = float(relative)
            behavior = replace(behavior, rate_limit_until=clock() + seconds)
    except (pydantic.ValidationError, TypeError, ValueError) as exc:
        return str(exc).replace("\n", "; ")
    return behavior


def _admin_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
