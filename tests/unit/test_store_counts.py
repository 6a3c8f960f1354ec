"""`StoreCounts`: the store's key counts read in the background for `/metrics`, and the
original llmGateway's gauge `llm_gateway_keys_total` made from them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import eventually

from llmgateway.observe.metrics import LEGACY_KEYS, Metrics
from llmgateway.observe.store_counts import REFRESH_SEC, StoreCounts
from llmgateway.records import StatusCount

FIRST: tuple[StatusCount, ...] = (StatusCount("openai", "gpt-4o-mini", "valid", 3, None),)
SECOND: tuple[StatusCount, ...] = (
    StatusCount("openai", "gpt-4o-mini", "valid", 2, None),
    StatusCount("openai", "gpt-4o-mini", "invalid_key", 1, None),
)


class Source:
    """A read of the counts that answers, fails or hangs as the test says, counting calls."""

    def __init__(self) -> None:
        self.answer: Sequence[StatusCount] = FIRST
        self.failure: Exception | None = None
        self.hang = asyncio.Event()  # never set: a read awaiting it hangs
        self.hanging = False
        self.reads = 0

    async def __call__(self) -> Sequence[StatusCount]:
        self.reads += 1
        if self.hanging:
            await self.hang.wait()
        if self.failure is not None:
            raise self.failure
        return self.answer


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmgateway.metrics"]


async def test_a_failed_read_keeps_the_last_counts_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "llmgateway.metrics")
    source = Source()
    stored = StoreCounts(source)
    assert await stored.refresh()
    assert stored.counts == FIRST

    source.failure = ConnectionRefusedError("postgresql://gw:s3cret-pass@db/llm refused")
    source.answer = SECOND
    for _ in range(3):
        assert not await stored.refresh()
    assert stored.counts == FIRST
    assert stored.failing
    logged = warnings(caplog)
    assert len(logged) == 1, logged
    assert "ConnectionRefusedError" in logged[0]
    assert "s3cret" not in logged[0]  # the exception's text (it may hold a URL) is not logged

    source.failure = None
    assert await stored.refresh()
    assert await stored.refresh()
    assert stored.counts == SECOND
    assert not stored.failing
    assert warnings(caplog)[1:] == ["key counts for the metrics read from the store again"]


async def test_a_read_that_hangs_is_abandoned_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    stored = StoreCounts(source, timeout=0.05)
    assert await stored.refresh()
    source.hanging = True
    assert not await asyncio.wait_for(stored.refresh(), 5)
    assert stored.counts == FIRST
    assert "timed out" in warnings(caplog)[0]


async def test_follow_reads_again_after_each_interval() -> None:
    source = Source()
    stored = StoreCounts(source)
    asked: list[float] = []
    ticks: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await ticks.get()

    task = asyncio.create_task(stored.follow(sleep))
    try:
        await eventually(lambda: asked == [REFRESH_SEC])
        assert source.reads == 0  # the first read is the caller's, at start
        source.answer = SECOND
        ticks.put_nowait(None)
        await eventually(lambda: len(asked) == 2)
        assert source.reads == 1
        assert stored.counts == SECOND
        source.failure = RuntimeError("down")
        ticks.put_nowait(None)
        await eventually(lambda: len(asked) == 3)  # a failure does not end the loop
        assert stored.counts == SECOND
    finally:
        task.cancel()


def legacy(text: str) -> dict[tuple[str, str, str], float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families[LEGACY_KEYS]
    assert family.type == "gauge"
    return {
        (s.labels["provider"], s.labels["model"], s.labels["status"]): s.value
        for s in family.samples
    }


def test_the_original_gauge_has_its_name_labels_and_the_stored_statuses() -> None:
    counts = [
        StatusCount("openai", "gpt-4o-mini", "valid", 5, None),
        StatusCount("openai", "gpt-4o-mini", "rate_limited", 2, 10.0),
        StatusCount("gemini", "shared", "no_quota", 1, None),
    ]
    text = Metrics.create().exposition((), counts).decode()
    assert f"# TYPE {LEGACY_KEYS} gauge" in text
    assert "aggregate with max(), not sum()" in text
    assert legacy(text) == {
        ("openai", "gpt-4o-mini", "valid"): 5,
        ("openai", "gpt-4o-mini", "rate_limited"): 2,
        ("gemini", "shared", "no_quota"): 1,
    }
    assert legacy(Metrics.create().exposition((), ()).decode()) == {}  # read, no keys yet
    assert LEGACY_KEYS not in Metrics.create().exposition().decode()  # not read here
