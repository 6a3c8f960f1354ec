"""What a route adds to a request, counted in Python bytecodes: deterministic where CPU time is not.

    .venv/bin/python bench/route_ops.py [--requests 300] [--stream] [--top 25]
        [--lines FILE:FUNCTION ...]

The gateway app (`bench/run.py`'s route config: provider `bench`, two twins, the route
`gpt-4o-mini` over the three) runs in this process against the fake upstream in its own, and is
called as an ASGI app (no server: the socket's side is the same for both tokens). The same chat
request is sent `--requests` times with the provider's token, then with the route's gateway
token, under a tracer that counts every bytecode executed, per function. Printed: bytecodes per
request for each token, and the functions whose count differs most. Background tasks (the pool
refresh, the write-behinds) are left out: only the request's own task is counted. The tracer
slows the process about fiftyfold: the times it would print mean nothing, which is why it
prints none.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from llmgateway.conductor.app import create_app
from llmgateway.config.load import load_settings
from run import BODY, ROUTE_TOKEN, TOKEN, fake_upstream, route_config

Tracer = Callable[[FrameType, str, Any], Any]


REQUEST = "measured-request"
"""The name of the tasks whose bytecodes count (the background tasks' are left out)."""


def counting(counts: collections.Counter[str], lines: frozenset[str] = frozenset()) -> Tracer:
    """A `sys.settrace` tracer adding each bytecode a request's task executes to its
    function's count (a coroutine's frame is traced anew each time it resumes, so the pool
    refresh and the write-behinds running between a request's steps are not counted)."""

    def call(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        task = asyncio.current_task()
        if task is None or task.get_name() != REQUEST:
            return None
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"
        if code.co_filename == "<string>" and "self" in frame.f_locals:  # a dataclass's
            name += f"({type(frame.f_locals['self']).__name__})"
        by_line = name in lines

        def local(frame: FrameType, event: str, arg: Any) -> Tracer:
            if event == "opcode":
                counts[name] += 1
                if by_line:
                    counts[f"{name}@{frame.f_lineno}"] += 1
            return local

        return local

    return call


async def request(app: Any, token: str, body: bytes) -> None:
    """One POST /v1/chat/completions through the ASGI app; fails unless it answers 200."""
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    given = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays until the answer is sent
        return {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [200]:
        raise SystemExit(f"the gateway answered {statuses}")


@contextlib.asynccontextmanager
async def route_app(more: Mapping[str, Any] | None = None) -> AsyncIterator[Any]:
    """The gateway app of `bench/run.py`'s route config (the settings of `more` merged in),
    started in this process (its lifespan run) against the fake upstream in its own, with its
    pool loaded; stopped at the end."""
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base:
        app: Any = create_app(load_settings(route_config(Path(tmp), base, more=more)))
        started: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        steps: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await steps.put({"type": "lifespan.startup"})
        lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        life = asyncio.create_task(app(lifespan, steps.get, started.put))
        await started.get()
        await asyncio.sleep(1.5)  # the pool loaded and the first refresh done
        try:
            yield app
        finally:
            await steps.put({"type": "lifespan.shutdown"})
            await started.get()
            await life


async def measure(requests: int, stream: bool, top: int, lines: frozenset[str]) -> None:
    body = (BODY % (',"stream":true' if stream else "")).encode()
    async with route_app() as app:
        found: dict[str, collections.Counter[str]] = {}
        for name, token in (("provider token", TOKEN), ("route token", ROUTE_TOKEN)):
            for _ in range(50):  # warm: connections open, caches filled
                await request(app, token, body)
            counts: collections.Counter[str] = collections.Counter()
            sys.settrace(counting(counts, lines))
            try:
                for _ in range(requests):
                    await asyncio.create_task(request(app, token, body), name=REQUEST)
            finally:
                sys.settrace(None)
            found[name] = counts
    plain, routed = found["provider token"], found["route token"]
    per = float(requests)
    print(f"{'stream' if stream else 'chat'}, {requests} requests each, bytecodes per request")
    total = {
        token: sum(n for name, n in counts.items() if "@" not in name) / per
        for token, counts in found.items()
    }
    print(f"provider token {total['provider token']:8.0f}")
    print(f"route token    {total['route token']:8.0f}")
    print(f"difference     {total['route token'] - total['provider token']:+8.0f}")
    for wanted in sorted(lines):
        print(f"\n{wanted}, bytecodes per request by line (route, provider)")
        at = sorted(
            {n for n in set(plain) | set(routed) if n.startswith(wanted + "@")},
            key=lambda n: int(n.rsplit("@", 1)[1]),
        )
        for name in at:
            print(f"{routed[name] / per:7.1f} {plain[name] / per:8.1f}  {name}")
    names = {n for n in set(plain) | set(routed) if "@" not in n}
    moved = sorted(names, key=lambda n: -abs(routed[n] - plain[n]))[:top]
    print(f"\n{'route':>7} {'provider':>8} {'diff':>7}  function")
    for name in moved:
        a, b = plain[name] / per, routed[name] / per
        print(f"{b:7.0f} {a:8.0f} {b - a:+7.0f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--lines",
        action="append",
        default=[],
        metavar="FILE:FUNCTION",
        help="also count this function's bytecodes by line (repeatable)",
    )
    args = parser.parse_args()
    asyncio.run(measure(args.requests, args.stream, args.top, frozenset(args.lines)))


if __name__ == "__main__":
    main()
