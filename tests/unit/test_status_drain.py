"""`StatusWriter.drain`: at a graceful stop every pending change is written, through a store
that fails for a while; a store that never answers costs at most the drain timeout, and the
number of dropped changes is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pytest

from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.core.outcomes import ErrorReason, KeyStatus
from llmgateway.core.pool_keys import StatusChange
from llmgateway.store import StatusEvent


def change(key_id: int) -> StatusChange:
    return StatusChange(key_id, "*", KeyStatus.INVALID_KEY, ErrorReason.INVALID_KEY, None, 401)


class FlakyStore:
    """Takes batches after failing `failures` times; records every event it took."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.taken: list[int] = []
        self.calls = 0

    async def write(self, events: Sequence[StatusEvent]) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.taken.extend(event.key_id for event in events)


async def test_drain_writes_every_pending_change_in_batches() -> None:
    store = FlakyStore(failures=2)
    writer = StatusWriter(store.write, batch_size=500)
    for key_id in range(5_000):
        writer.offer("openai", change(key_id), now=1_800_000_000.0)
    assert writer.pending == 5_000
    assert await writer.drain(within=10.0) == 0
    assert sorted(store.taken) == list(range(5_000))
    assert writer.pending == 0
    assert store.calls == 2 + 10  # two failures, then ten batches of 500


async def test_a_store_that_never_answers_costs_the_timeout_and_the_drop_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="llmgateway.events")  # whatever set the root
    store = FlakyStore(failures=10**9)
    writer = StatusWriter(store.write)
    for key_id in range(42):
        writer.offer("openai", change(key_id), now=1_800_000_000.0)
    started = time.monotonic()
    assert await writer.drain(within=0.3) == 42
    assert time.monotonic() - started < 2.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("stopping with 42 status changes unwritten" in w for w in warnings)


async def test_nothing_pending_drains_at_once_without_writing() -> None:
    store = FlakyStore(failures=0)
    assert await StatusWriter(store.write).drain(within=10.0) == 0
    assert store.calls == 0
