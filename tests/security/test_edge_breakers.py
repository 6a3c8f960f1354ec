"""A client cannot open a circuit breaker or get a key blamed by what it sends, over a real
socket against the real gateway with the breaker on (`failure_threshold: 3`).

Odd but valid targets are answered 404 by the gateway itself (never a 502, which would be
counted against the provider); a target the upstream does not know comes back as the upstream's
404, a client error that feeds no breaker; header values an HTTP/1.1 client could refuse are
either carried or refused 400, never a 502/503."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from llmgateway.testing.hostile import answer
from tests.security.edge import (
    CHAT,
    GENERATE,
    JSON,
    Rig,
    gemini_error,
    openai_error,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

REQUESTS = 20  # well over the threshold of 3

ODD_OPENAI = [
    "/v1/x%E2%82%AC",
    "/v1/chat/completions%E2%80%8B",
    "/v1/chat/completions;x",
    "/v1/chat/completions:",
    "/v1/chat//completions",
    "/v1//chat/completions",
    "/v1/chat/completions/",
    "/v1/CHAT/COMPLETIONS",
    "/v1/chat/%63ompletions",
    "/v1/%41%42",
    "/v1/chat/completions~",
    "/v1/@",
    "/v1/!$&'()*+,;=",
    "/v1/...",
    "/v1/.well-known/x",
    "/v1/" + "a" * 2000,
]
ODD_GEMINI = [
    "/v1beta/models/gemini-2.5-flash:unknownMethod",
    "/v1beta/models/gemini-2.5-flash:generateContent:x",
    "/v1beta/models/gemini-2.5-flash%3AgenerateContent",
    "/v1beta/models/gemini-2.5-flash",  # POST: only GET reads a model
    "/v1beta/models",
    "/v1beta/x%E2%82%AC",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    folder = tmp_path_factory.mktemp("breakers")
    policy = {"allowed_routes": ["/v1/files/*"]}
    async with running_rig(folder, openai_policy=policy) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


async def test_odd_openai_targets_are_a_404_and_open_no_breaker(rig: Rig) -> None:
    for target in itertools.islice(itertools.cycle(ODD_OPENAI), REQUESTS):
        refused = await rig.send("POST", target, [("content-type", "application/json")], CHAT)
        openai_error(refused, 404, "not_found")
    rig.assert_untouched()


async def test_odd_gemini_targets_are_a_404_and_open_no_breaker(rig: Rig) -> None:
    for target in itertools.islice(itertools.cycle(ODD_GEMINI), REQUESTS):
        refused = await rig.send("POST", target, body=GENERATE, token="gemini", as_google=True)
        gemini_error(refused, 404, "not_found")
    rig.assert_untouched()


@pytest.mark.parametrize("status", [400, 404, 405, 409, 413, 422])
async def test_the_upstreams_client_errors_open_no_breaker(rig: Rig, status: int) -> None:
    """A target under an allowed wildcard route that the upstream does not know: its 4xx is the
    client's, passed on, and neither a breaker nor a key learns anything from it."""
    error = orjson.dumps({"error": {"message": "no such file", "type": "invalid_request_error"}})
    rig.reset(answer(error, status=status, headers=JSON))
    for n in range(REQUESTS):
        passed = await rig.send("GET", f"/v1/files/x%E2%82%AC{n}")
        assert passed.status == status
        assert passed.body == error
    assert len(rig.upstream.seen) == REQUESTS  # each went once: a client error is not retried
    rig.assert_intact()


HEADER_VALUES = [
    pytest.param(("user-agent", b"caf\xe9/1.0"), id="latin-1"),
    pytest.param(("user-agent", b"\x80\x81\xfe\xff"), id="obs-text"),
    pytest.param(("x-stainless-os", "\u00e9".encode()), id="utf-8"),
    pytest.param(("accept", b"*/*\x0b"), id="vertical-tab"),
    pytest.param(("accept", b"*/*\x7f"), id="del"),
    pytest.param(("accept", b"a\rb"), id="bare-cr"),
    pytest.param(("accept", b"a\x00b"), id="nul"),
    pytest.param(("accept", b" "), id="blank"),
    pytest.param(("idempotency-key", b"k" * 8000), id="long"),
    pytest.param(("content-type", b"application/json; charset=\xff"), id="content-type"),
]


@pytest.mark.parametrize("header", HEADER_VALUES)
async def test_header_values_are_carried_or_refused_never_a_5xx(
    rig: Rig, header: tuple[str, bytes]
) -> None:
    for _ in range(REQUESTS // 4):
        rig.reset()
        answered = await rig.send("POST", "/v1/chat/completions", [header], CHAT)
        assert answered.status in (200, 400), answered.status
        if answered.status == 200:
            name, value = header
            assert b"\r\n%s: %s\r\n" % (name.encode(), value.strip()) in rig.upstream_head()
        else:
            assert rig.upstream.seen == []
    rig.assert_intact()
