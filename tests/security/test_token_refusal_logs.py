"""Requests without a valid gateway token, over a real socket against the real gateway: each is
answered 401 and counted (`llmgateway_auth_failures_total{surface,reason}`), the first is
logged at INFO with the client's address, the method and the path (never the query string),
and a flood of them writes one line, then at most one summary line per minute. The token
presented never appears in any line, not even masked: only how it was sent and its length."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.config.settings import LoggingSettings
from llmgateway.observe import logs
from llmgateway.observe.access import TokenRefusals
from llmgateway.observe.metrics import Metrics
from tests.helpers import ManualClock
from tests.security.edge import CHAT, GENERATE, JSON, Rig, gemini_error, openai_error, running_rig

pytestmark = pytest.mark.security

WRONG = "wrong-gateway-token-Hy7Rk2Ln9Vd4zQwX"  # its tail is what a mask would show
CHAT_PATH = "/v1/chat/completions"
NATIVE = "/v1beta/models/gemini-2.5-flash:generateContent"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Every line of the process at INFO as JSON in a file (as `logging.dir` writes them)."""
    folder = tmp_path / "logs"
    logs.configure(LoggingSettings(level="INFO", format="json", dir=folder), name="test")
    yield folder / "test.log"
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path / "gateway") as rig:
        yield rig


def refusals_of(rig: Rig, clock: ManualClock) -> TokenRefusals:
    """The gateway's token refusals, on `clock` (so a minute passes when the test says)."""
    refusals: TokenRefusals = rig.app.state.edge.refusals
    refusals.clock = clock
    return refusals


def lines(path: Path, logger: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in found if logger is None or line["logger"] == logger]


def counted(rig: Rig) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    metrics: Metrics = rig.app.state.edge.attempt_loop.metrics
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }


def failures(rig: Rig, surface: str, reason: str) -> float:
    key = (
        "llmgateway_auth_failures_total",
        frozenset({"surface": surface, "reason": reason}.items()),
    )
    return counted(rig).get(key, 0.0)


def assert_token_absent(text: str) -> None:
    """Neither the token nor any part a mask would keep (its head, its last four)."""
    assert WRONG not in text
    assert WRONG[-4:] not in text
    assert WRONG[:12] not in text


SHAPES = [
    # (what the client sends, the target, the body, surface, reason, sent_as)
    ([("authorization", f"Bearer {WRONG}")], CHAT_PATH, CHAT, "openai", "wrong", "bearer"),
    ([("x-goog-api-key", WRONG)], NATIVE, GENERATE, "gemini", "wrong", "x-goog-api-key"),
    ([], f"{NATIVE}?alt=sse&key={WRONG}", GENERATE, "gemini", "wrong", "key-query"),
    ([("api-key", WRONG)], "/v1/chat/completions", CHAT, "openai", "wrong", "api-key"),
    ([("x-api-key", WRONG)], "/v1/messages", CHAT, "anthropic", "wrong", "x-api-key"),
    ([], "/v1/chat/completions?debug=1", CHAT, "openai", "missing", "none"),
    ([("authorization", f"Basic {WRONG}")], "/v1/embeddings", CHAT, "openai", "missing",
     "other-authorization"),
]  # fmt: skip


async def test_every_shape_of_refusal_is_logged_without_the_token(rig: Rig, log_file: Path) -> None:
    clock = ManualClock()
    refusals_of(rig, clock)
    for headers, target, body, surface, _, _ in SHAPES:
        answer = await rig.send("POST", target, [*JSON, *headers], body, token=None)
        if surface == "openai":
            openai_error(answer, 401, "invalid_api_key")
        elif surface == "anthropic":
            assert answer.status == 401
            document = answer.json()
            assert document["type"] == "error"
            assert set(document["error"]) == {"type", "message"}
            assert document["error"]["type"] == "authentication_error"
        else:
            gemini_error(answer, 401, "invalid_api_key")
        clock.advance(60)  # a quiet minute: the next refusal gets its own line
    refused = lines(log_file, "llmgateway.auth")
    assert len(refused) == len(SHAPES)
    for line, (_, target, _, surface, reason, sent_as) in zip(refused, SHAPES, strict=True):
        assert line["level"] == "info"
        assert line["client"] == "127.0.0.1"
        assert line["method"] == "POST"
        assert line["path"] == target.partition("?")[0]  # never the query string
        assert (line["surface"], line["reason"], line["sent_as"]) == (surface, reason, sent_as)
        assert line["token_length"] == (len(WRONG) if reason == "wrong" else 0)
        assert "not_logged_before" not in line
    assert_token_absent(log_file.read_text())
    assert failures(rig, "openai", "wrong") == 2
    assert failures(rig, "gemini", "wrong") == 2
    assert failures(rig, "openai", "missing") == 2
    assert failures(rig, "gemini", "missing") == 0
    none = (
        "llmgateway_requests_total",
        frozenset({"provider": "none", "model": "other", "code": "401"}.items()),
    )
    assert counted(rig)[none] == len(SHAPES)
    assert not [label for (name, labels) in counted(rig) for label in labels if WRONG in label[1]]
    rig.assert_untouched()


async def test_a_flood_of_wrong_tokens_writes_one_line_then_one_summary(
    rig: Rig, log_file: Path
) -> None:
    clock = ManualClock()
    refusals = refusals_of(rig, clock)
    before = len(lines(log_file))
    flood = 300

    async def wrong(n: int) -> None:
        sent = [*JSON, ("authorization", f"Bearer {WRONG}{n}")]
        answer = await rig.send("POST", f"/v1/chat/completions?n={n}", sent, CHAT, token=None)
        assert answer.status == 401

    for batch in range(0, flood, 20):
        await asyncio.gather(*(wrong(n) for n in range(batch, batch + 20)))
    written = lines(log_file)[before:]
    assert [line["logger"] for line in written] == ["llmgateway.auth"], written[:5]
    assert failures(rig, "openai", "wrong") == flood
    # a minute later (the timer's call, made here on the test's clock): one summary line
    refusals.summarize()  # too early: nothing
    clock.advance(60)
    refusals.summarize()
    summary = lines(log_file, "llmgateway.auth")[1:]
    assert len(summary) == 1
    assert summary[0]["level"] == "info"
    assert summary[0]["count"] == flood - 1
    latest = summary[0]["latest"]
    assert (latest["client"], latest["method"], latest["path"]) == (
        "127.0.0.1",
        "POST",
        "/v1/chat/completions",
    )
    assert latest["sent_as"] == "bearer"
    refusals.summarize()  # nothing more held: nothing more written
    assert len(lines(log_file, "llmgateway.auth")) == 2
    assert_token_absent(log_file.read_text())
    # the right token is served as ever
    answer = await rig.send("POST", "/v1/chat/completions", JSON, CHAT)
    assert answer.status == 200
    rig.assert_intact()
