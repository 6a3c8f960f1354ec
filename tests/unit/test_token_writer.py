"""`TokenWriter`: one answer's tokens added to its slot (client × route × provider × model ×
key × hour) on the request path, memory bounded by slots, written in batches; a failing store
keeps the counts for the next flush; a full table drops new slots and counts what it dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.providers.usage import Tokens
from llmgateway.records import USAGE_HOUR, TokenCount

HOUR0 = 1_800_000_000


class Store:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.rows: dict[tuple[object, ...], list[int]] = {}
        self.batches: list[int] = []

    async def write(self, counts: Sequence[TokenCount]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.batches.append(len(counts))
        for c in counts:
            held = self.rows.setdefault(
                (c.hour, c.client, c.route, c.provider, c.model, c.key_id), [0] * 6
            )
            for i, v in enumerate(
                (c.requests, c.input, c.output, c.cached, c.reasoning, c.missing)
            ):
                held[i] += v


async def test_answers_coalesce_per_slot_and_hour() -> None:
    now = [HOUR0 + 10.0]
    store = Store()
    writer = TokenWriter(store.write, clock=lambda: now[0])
    for _ in range(100):
        writer.count("ci", "fast", "openai", "gpt", 3, Tokens(10, 5, 4, 1))
    writer.count("ci", "fast", "openai", "gpt", 3, None)
    now[0] += USAGE_HOUR
    writer.count("-", "-", "gemini", "flash", 7, Tokens(1, 2, 0, 2))
    assert writer.pending == 2
    assert await writer.flush()
    assert store.rows == {
        (HOUR0, "ci", "fast", "openai", "gpt", 3): [101, 1000, 500, 400, 100, 1],
        (HOUR0 + USAGE_HOUR, "-", "-", "gemini", "flash", 7): [1, 1, 2, 0, 2, 0],
    }
    assert writer.pending == 0


async def test_a_failing_store_keeps_the_counts_and_a_full_table_drops_new_slots() -> None:
    store = Store(failures=1)
    writer = TokenWriter(store.write, clock=lambda: HOUR0, batch_size=2, limit=3)
    for key in range(5):
        writer.count("c", "-", "p", "m", key, Tokens(1, 1, 0, 0))
    assert writer.pending == 3
    assert writer.dropped == 2
    assert not await writer.flush()
    writer.count("c", "-", "p", "m", 0, Tokens(1, 1, 0, 0))  # meanwhile
    assert await writer.flush()
    assert sum(row[0] for row in store.rows.values()) == 4
    assert store.rows[(HOUR0, "c", "-", "p", "m", 0)][0] == 2
    assert writer.failures == 1


async def test_a_flush_cancelled_mid_write_keeps_its_counts_for_the_drain() -> None:
    started = asyncio.Event()

    async def hanging(counts: Sequence[TokenCount]) -> None:
        started.set()
        await asyncio.Event().wait()

    writer = TokenWriter(hanging, clock=lambda: HOUR0)
    writer.count("c", "-", "p", "m", 1, Tokens(3, 4, 0, 0))
    flushing = asyncio.create_task(writer.flush())
    await started.wait()
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    store = Store()
    writer.write = store.write
    assert await writer.drain(1.0) == 0
    assert store.rows == {(HOUR0, "c", "-", "p", "m", 1): [1, 3, 4, 0, 0, 0]}
