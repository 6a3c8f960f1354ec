"""Token accounting's costs: the store's write load at 10,000 answers/s, and the request path's
per-answer work.

    .venv/bin/python bench/token_usage.py [--rate 10000] [--seconds 10] [--keys 5000]
        [--clients 50] [--pg-url URL]

Write load, per database: the real `TokenWriter` fed `--rate` answers a second for `--seconds`
(in 10 ms ticks, each answer a random client × route × provider × model × key out of the given
counts: with the defaults nearly every answer is a new slot, the worst case for the store),
flushed every `records.USAGE_FLUSH_SEC` in a background task through `store.token_usage.record`
as a gateway does. Reported: the answers/s actually fed (the flushes share the event loop and
its CPU, as in a gateway; "feed" is the request path's `count()` per answer), the
transactions a second the store took (one per batch of 1,000 slots), rows a second, the median
and worst flush time, and the counts checked against what was fed. PostgreSQL gets a fresh
schema, dropped afterwards; it is skipped when unreachable.

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


async def write_load(
    opened: Callable[[Path], AbstractAsyncContextManager[Store]],
    folder: Path,
    args: argparse.Namespace,
) -> str:
    """Feed the writer at `args.rate` for `args.seconds`; the store's load as one line."""
    async with opened(folder) as store:
        await store.upgrade()
        flushes: list[float] = []
        batches = 0

        async def timed(counts: list[TokenCount]) -> None:
            nonlocal batches
            batches += 1
            await token_usage.record(store, counts)

        writer = TokenWriter(timed)  # type: ignore[arg-type]
        rng = random.Random(7)
        slots = [
            (
                f"client-{rng.randrange(args.clients)}",
                f"route-{rng.randrange(5)}",
                f"provider-{rng.randrange(3)}",
                f"model-{rng.randrange(10)}",
                rng.randrange(args.keys),
            )
            for _ in range(200_003)
        ]
        tokens = Tokens(100, 20, 10, 5)
        per_tick = int(args.rate * TICK)
        fed = 0
        spent = 0.0

        async def flushing() -> None:  # the gateway's background task, timed
            while True:
                await asyncio.sleep(USAGE_FLUSH_SEC)
                begun = time.perf_counter()
                await writer.flush()
                flushes.append(time.perf_counter() - begun)

        flusher = asyncio.create_task(flushing())
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            tick = time.perf_counter()
            due = int(args.rate * (tick - started)) + per_tick  # catching up after a stall
            while fed < due:
                writer.count(*slots[fed % len(slots)], tokens)
                fed += 1
            spent += time.perf_counter() - tick
            await asyncio.sleep(max(0.0, TICK - (time.perf_counter() - tick)))
        elapsed = time.perf_counter() - started
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await writer.drain(30.0)
        stored = await token_usage.totals(store, 0.0, "provider")
        assert sum(t.requests for t in stored) == fed, "the counts do not add up"
        return (
            f"{fed / elapsed:>9,.0f} answers/s  {batches / elapsed:>6.2f} tx/s  "
            f"{writer.written / elapsed:>8,.0f} rows/s  "
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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keys", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pg-url", default=os.environ.get("LLMGATEWAY_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    shape = f"{args.keys:,} keys × {args.clients} clients × 5 routes × 30 models"
    print(f"write load: {args.rate:,} answers/s offered for {args.seconds:g} s, a flush every")
    print(f"{USAGE_FLUSH_SEC:g} s; each answer's slot drawn from {shape}")
    with TemporaryDirectory() as folder:
        print(f"{'sqlite':<11}", await write_load(sqlite_store, Path(folder), args))
        try:
            opened = pg_store(args.pg_url)
            print(f"{'postgresql':<11}", await write_load(opened, Path(folder), args))
        except OSError as exc:
            print(f"postgresql skipped: {type(exc).__name__}: {exc}")
    print("\nrequest path, per answer:")
    for label, micros in per_answer():
        print(f"  {label:<34} {micros:8.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
