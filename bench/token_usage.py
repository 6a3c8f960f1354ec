"""Token accounting's costs: the store's write load at 10,000 answers/s, and the request path's
per-answer work.

    .venv/bin/python bench/token_usage.py [--rate 10000] [--seconds 8] [--pg-url URL]

Write load, per database and per shape of the traffic: the real `TokenWriter` is fed exactly
`--rate` answers a second for `--seconds` (100 answers per 10 ms tick, catching up after a
stall: a flush of many rows holds the event loop, as in a gateway), flushed every
`records.USAGE_FLUSH_SEC` in a background task through `store.token_usage.record` as a gateway
does, then drained. Shapes: "pooled" is a gateway's traffic, 50 clients (a few busy, many quiet)
each using one or two of 5 routes, each route over 2 provider/model targets of 3 providers with
200 keys each, a key drawn at random per answer (the keys multiply the slots: about half the
answers of a flush are a new slot); "worst" makes every answer a new slot (5,000 keys × 50
clients × 5 routes × 30 models). Reported: the answers/s fed, the store transactions per second
(one per batch of 1,000 slots) and rows per second over the offered seconds, the median and
worst flush time, and the counts checked against what was fed. PostgreSQL gets a fresh schema,
dropped afterwards; it is skipped when unreachable.

Hot path: the microseconds per answer of reading its usage (`UsageScan`) for a whole chat
answer, a streamed one of 20 chunks without usage, with a usage chunk (`include_usage`), a
Gemini stream (usage on every chunk), and what `inject`'s strip adds to a stream; plus one
`TokenWriter.count()`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import timeit
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from tempfile import TemporaryDirectory

from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.core.stream_usage import UsageStrip
from llmgateway.providers.usage import Tokens, UsageScan
from llmgateway.records import USAGE_FLUSH_SEC, TokenCount
from llmgateway.store import Store, token_usage
from llmgateway.testing import wire
from sync import DEFAULT_PG, pg_store, sqlite_store

TICK = 0.01
Answer = tuple[str, str, str, str, int]
"""(client, route, provider, model, key id): an answer's slot but for the hour."""


def pooled(rng: random.Random, count: int) -> list[Answer]:
    """A gateway's answers: clients Zipf-weighted over one or two routes each, a route's two
    targets weighted 2:1, a key drawn from its provider's 200."""
    targets = {
        f"route-{r}": [(f"provider-{(r + t) % 3}", f"model-{r}-{t}") for t in range(2)]
        for r in range(5)
    }
    names = list(targets)
    clients = [(f"client-{c}", rng.sample(names, 1 + c % 2)) for c in range(50)]
    weights = [1 / (rank + 1) for rank in range(len(clients))]
    answers = []
    for client, routes in rng.choices(clients, weights, k=count):
        route = rng.choice(routes)
        provider, model = rng.choices(targets[route], (2, 1))[0]
        key = int(provider.rsplit("-", 1)[1]) * 1000 + rng.randrange(200)
        answers.append((client, route, provider, model, key))
    return answers


def worst(rng: random.Random, count: int) -> list[Answer]:
    """Answers that are nearly all new slots."""
    return [
        (
            f"client-{rng.randrange(50)}",
            f"route-{rng.randrange(5)}",
            f"provider-{rng.randrange(3)}",
            f"model-{rng.randrange(10)}",
            rng.randrange(5000),
        )
        for _ in range(count)
    ]


SHAPES = {"pooled": pooled, "worst": worst}


async def write_load(
    opened: Callable[[Path], AbstractAsyncContextManager[Store]],
    folder: Path,
    answers: list[Answer],
    args: argparse.Namespace,
) -> str:
    """Feed the writer `answers` at `args.rate` a second; the store's load as one line."""
    async with opened(folder) as store:
        await store.upgrade()
        flushes: list[float] = []
        batches = 0

        async def timed(counts: list[TokenCount]) -> None:
            nonlocal batches
            batches += 1
            await token_usage.record(store, counts)

        writer = TokenWriter(timed)  # type: ignore[arg-type]
        tokens = Tokens(100, 20, 10, 5)

        async def flushing() -> None:  # the gateway's background task, timed
            while True:
                await asyncio.sleep(USAGE_FLUSH_SEC)
                begun = time.perf_counter()
                await writer.flush()
                flushes.append(time.perf_counter() - begun)

        flusher = asyncio.create_task(flushing())
        fed = 0
        spent = 0.0
        started = time.perf_counter()
        while fed < len(answers):
            tick = time.perf_counter()
            due = min(int(args.rate * (tick - started + TICK)), len(answers))
            while fed < due:
                writer.count(*answers[fed], tokens)
                fed += 1
            spent += time.perf_counter() - tick
            await asyncio.sleep(max(0.0, TICK - (time.perf_counter() - tick)))
        elapsed = time.perf_counter() - started
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        begun = time.perf_counter()
        await writer.drain(30.0)
        flushes.append(time.perf_counter() - begun)
        stored = await token_usage.totals(store, 0.0, "provider")
        assert sum(t.requests for t in stored) == fed, "the counts do not add up"
        return (
            f"{fed / elapsed:>7,.0f} answers/s  {batches / elapsed:>5.2f} tx/s  "
            f"{writer.written / elapsed:>7,.0f} rows/s  "
            f"flush p50 {statistics.median(flushes):.3f} s  max {max(flushes):.3f} s  "
            f"feed {spent / fed * 1e6:.2f} µs/answer"
        )


def per_answer() -> list[tuple[str, float]]:
    """Microseconds per answer of the request path's usage work."""
    whole = wire.openai_completion("gpt-4o-mini", 20)
    plain = wire.openai_chunks("gpt-4o-mini", 20, False)
    with_usage = wire.openai_chunks("gpt-4o-mini", 20, True)
    gemini = wire.gemini_chunks("gemini-2.5-flash", 20, True)

    def scan(chunks: tuple[bytes, ...], surface: str = "openai") -> None:
        reader = UsageScan(surface)  # type: ignore[arg-type]
        for chunk in chunks:
            reader.feed(chunk)
        reader.tokens()

    def strip(chunks: tuple[bytes, ...]) -> None:
        stripper = UsageStrip()
        for chunk in chunks:
            stripper.feed(chunk)

    writer = TokenWriter(lambda counts: asyncio.sleep(0))
    tokens = Tokens(1, 2, 0, 0)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("whole chat answer (1 parse)", lambda: scan((whole,))),
        ("stream, 20 chunks, no usage", lambda: scan(plain)),
        ("stream, 20 chunks + usage chunk", lambda: scan(with_usage)),
        ("gemini stream, usage x20", lambda: scan(gemini, "gemini")),
        ("inject strip, 20 chunks", lambda: strip(with_usage)),
        ("TokenWriter.count()", lambda: writer.count("c", "r", "p", "m", 1, tokens)),
    ]
    found = []
    for label, work in cases:
        runs = 2000
        best = min(timeit.repeat(work, number=runs, repeat=5))
        found.append((label, best / runs * 1e6))
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    print(f"write load: {args.rate:,} answers/s for {args.seconds:g} s, a flush every")
    print(f"{USAGE_FLUSH_SEC:g} s, batches of 1,000 slots (one transaction each)")
    stores: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
        "sqlite": sqlite_store,
        "postgresql": pg_store(args.pg_url),
    }
    with TemporaryDirectory() as folder:
        for shape, make in SHAPES.items():
            answers = make(random.Random(7), count)
            for name, opened in stores.items():
                try:
                    line = await write_load(opened, Path(folder), answers, args)
                except OSError as exc:
                    line = f"skipped: {type(exc).__name__}: {exc}"
                print(f"{shape:<7} {name:<11}", line)
    print("\nrequest path, per answer:")
    for label, micros in per_answer():
        print(f"  {label:<34} {micros:8.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
