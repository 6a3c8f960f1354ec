"""Micro-benchmark of a route's per-request work: resolving the model, building the plan and
rewriting the model in the body (the issue's bound: 20 µs per request).

    .venv/bin/python bench/route_plan.py [--ops 200000]

Each row is one request's route work, repeated `--ops` times: `resolve_model` (the token's
aliases, a dict), the first target as the request path draws it (`first`, a weighted draw;
when that target turns out to have no usable key, as its attempt finds out, the rest of the
`plan` with an O(1) eligibility predicate of the kind the pool gives: a next-ready time per
provider and model, compared with now), and `rewrite_model` on a
chat body of each size, searching the body itself or told that the body is plain (`"model"`
once, no `\\u` escape: what `conductor.admission` checks before it parses). The best of three
runs, in µs per request; a 1 MB body's rewrite is mostly copying it.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable

from llmgateway.core.model_rewrite import rewrite_model
from llmgateway.core.route_plan import first, plan
from llmgateway.core.routes import Reach, Route, RouteHit, Target, resolve_model, tiered

NOW = 1_700_000_000.0


def chat_body(size: int) -> bytes:
    """A chat request naming the alias `fast`, about `size` bytes long."""
    text = "lorem ipsum " * max(1, (size - 80) // 12)
    head = b'{"model":"fast","messages":[{"role":"user","content":"'
    return head + text.encode() + b'"}],"stream":true}'


def scenario(targets: tuple[Target, ...], cooling: set[str]) -> tuple[Reach, Callable[..., bool]]:
    route = Route("fast", tiered(targets))
    ready = {(t.provider, t.model): NOW + (60 if t.provider in cooling else -1) for t in targets}

    def eligible(provider: str, model: str) -> bool:
        return ready.get((provider, model), NOW) <= NOW

    return Reach({"fast": route, "other": route}, frozenset()), eligible


def best_of_three(work: Callable[[], object], ops: int) -> float:
    """µs per call of `work`, the best of three runs of `ops` calls."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(ops):
            work()
        best = min(best, (time.perf_counter() - started) / ops * 1e6)
    return best


def first_target(route: Route, eligible: Callable[..., bool], rng: random.Random) -> Target:
    """The target that serves a request its first eligible target answers, drawn as the
    request path draws it."""
    drawn = first(route, rng)
    if eligible(drawn.provider, drawn.model):  # the request path's attempt finds this out
        return drawn
    following = next(plan(route, eligible, rng, [drawn]), None)
    assert following is not None
    return following


def request(
    reach: Reach, eligible: Callable[..., bool], body: bytes, plain: bool
) -> Callable[[], object]:
    """One request's route work: resolve the model, draw, rewrite the body for the target."""
    rng = random.Random(1)

    def work() -> object:
        hit = resolve_model("fast", reach)
        assert isinstance(hit, RouteHit)
        target = first_target(hit.route, eligible, rng)
        return rewrite_model(body, target.model, plain=plain)

    return work


def planning(reach: Reach, eligible: Callable[..., bool]) -> Callable[[], object]:
    rng = random.Random(1)

    def work() -> object:
        hit = resolve_model("fast", reach)
        assert isinstance(hit, RouteHit)
        return first_target(hit.route, eligible, rng)  # a request its target answers

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000, help="requests per run")
    args = parser.parse_args()
    one = (Target("gemini", "gemini-2.5-flash"),)
    three = (
        Target("gemini", "gemini-2.5-flash", weight=3),
        Target("deepseek", "deepseek-chat"),
        Target("openrouter", "google/gemini-2.5-flash"),
    )
    tiers = (*three[:2], Target("openrouter", "google/gemini-2.5-flash", priority=1))
    rows = [
        ("1 target", one, set()),
        ("3 targets, 1 tier", three, set()),
        ("3 targets, 2 tiers", tiers, set()),
        ("3 targets, 1 cooling", three, {"gemini"}),
    ]
    bodies = [chat_body(size) for size in (300, 10_000, 1_000_000)]
    print("µs per request. plan: resolve + plan. By body size: resolve + plan + rewrite, the")
    print("rewrite searching the body itself, or told by admission's checks that it is plain")
    head = "".join(f"{f'{len(b):,} B':>11}{'plain':>8}" for b in bodies)
    print(f"{'route':<22} {'plan':>6}{head}")
    cells = []
    for body in bodies:
        ops = _ops(body, args.ops)
        for plain in (False, True):
            rewrite = functools.partial(rewrite_model, body, "m", plain=plain)
            cells.append(best_of_three(rewrite, ops))
    print(f"{'(rewrite alone)':<22} {'':>6}" + _cells(cells))
    for name, targets, cooling in rows:
        reach, eligible = scenario(targets, cooling)
        planned = best_of_three(planning(reach, eligible), args.ops)
        cells = [
            best_of_three(request(reach, eligible, body, plain), _ops(body, args.ops))
            for body in bodies
            for plain in (False, True)
        ]
        print(f"{name:<22} {planned:>6.2f}" + _cells(cells))


def _cells(values: list[float]) -> str:
    return "".join(f"{v:>{11 if i % 2 == 0 else 8}.2f}" for i, v in enumerate(values))


def _ops(body: bytes, ops: int) -> int:
    return ops if len(body) < 100_000 else max(10, ops // 1000)


if __name__ == "__main__":
    main()
