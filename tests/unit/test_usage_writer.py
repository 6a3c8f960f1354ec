"""`UsageWriter`: counts per key × model × hour on the request path, held in memory bounded by
slots (not requests), written in batches; a failing store keeps the counts for the next flush,
and a full table drops new slots and says how many attempts it dropped."""

from __future__ import annotations

from collections.abc import Sequence

from llmgateway.conductor.usage_writer import UsageWriter
from llmgateway.records import USAGE_HOUR, UsageCount

HOUR0 = 1_800_000_000  # on the hour


class FlakyStore:
    """Takes batches after failing `failures` times; keeps every count it took, summed."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[int] = []
        self.taken: dict[tuple[str, int, str, int], tuple[int, int]] = {}
        self.stamps: list[float] = []

    async def write(self, counts: Sequence[UsageCount], taken_at: float) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.batches.append(len(counts))
        self.stamps.append(taken_at)
        for c in counts:
            slot = (c.provider, c.key_id, c.model, c.hour)
            r, f = self.taken.get(slot, (0, 0))
            self.taken[slot] = (r + c.requests, f + c.failures)


async def test_counts_coalesce_per_key_model_and_hour() -> None:
    store = FlakyStore()
    writer = UsageWriter(store.write, clock=lambda: HOUR0 + 7200.0)
    for i in range(1000):
        writer.count("p", 1, "m", i % 10 == 0, HOUR0 + i)
    writer.count("p", 1, "m", True, HOUR0 + USAGE_HOUR + 1)  # the next hour
    writer.count("p", 2, "m", False, HOUR0 + 5)
    assert writer.pending == 3  # 1,002 attempts, three slots
    assert await writer.flush()
    assert store.taken == {
        ("p", 1, "m", HOUR0): (1000, 100),
        ("p", 1, "m", HOUR0 + USAGE_HOUR): (1, 1),
        ("p", 2, "m", HOUR0): (1, 0),
    }
    assert store.stamps == [HOUR0 + 7200.0]
    assert writer.pending == 0


async def test_a_failing_store_keeps_the_counts_and_new_ones_add_up() -> None:
    store = FlakyStore(failures=1)
    writer = UsageWriter(store.write, batch_size=2)
    for key_id in range(5):
        writer.count("p", key_id, "m", False, HOUR0)
    assert not await writer.flush()
    assert writer.pending == 5
    writer.count("p", 0, "m", True, HOUR0)
    assert await writer.flush()
    assert store.batches == [2, 2, 1]  # one transaction per batch
    assert store.taken[("p", 0, "m", HOUR0)] == (2, 1)
    assert sum(r for r, _ in store.taken.values()) == 6


async def test_memory_is_bounded_by_slots_not_requests() -> None:
    store = FlakyStore()
    writer = UsageWriter(store.write, limit=3)
    for _ in range(10_000):
        for key_id in range(3):
            writer.count("p", key_id, "m", False, HOUR0)
    assert writer.pending == 3
    writer.count("p", 99, "m", False, HOUR0)  # a fourth slot: dropped, counted
    writer.count("p", 0, "m", False, HOUR0)  # an existing one still counts
    assert (writer.pending, writer.dropped) == (3, 1)
    assert await writer.flush()
    assert store.taken[("p", 0, "m", HOUR0)] == (10_001, 0)
    assert ("p", 99, "m", HOUR0) not in store.taken


async def test_drain_writes_what_is_left_through_a_failing_store() -> None:
    store = FlakyStore(failures=2)
    writer = UsageWriter(store.write)
    writer.count("p", 1, "m", False, HOUR0)
    assert await writer.drain(within=5.0) == 0
    assert store.taken == {("p", 1, "m", HOUR0): (1, 0)}
