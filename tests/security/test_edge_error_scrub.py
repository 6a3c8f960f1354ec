"""An upstream error answer that echoes the request it got (and so the pooled key) reaches the
client with the key masked (`sk-…abcd`), never in clear, over a real socket against the real
gateway: passed-through 4xx and 5xx, OpenAI and Gemini routes, plain text and JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import pytest_asyncio

from llmgateway.observe.masking import mask
from llmgateway.testing.hostile import Peer, Request, answer
from tests.security.edge import (
    CHAT,
    GEMINI_KEYS,
    GENERATE,
    OPENAI_KEYS,
    Rig,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

NATIVE = "/v1beta/models/gemini-2.5-flash:generateContent"
GEMINI_CHAT = CHAT.replace(b"gpt-4o-mini", b"gemini-2.5-flash")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    # no breaker: three 500s in a row are what these tests send, not what they are about
    async with running_rig(tmp_path_factory.mktemp("scrub"), breaker=False) as rig:
        yield rig


def echoing(status: int, wrap: bool) -> Callable[[Request, Peer], Awaitable[None]]:
    """An error answer holding the request's whole head (its key header included), as text or
    inside a JSON error message."""

    async def script(request: Request, peer: Peer) -> None:
        text = request.head + request.body
        if wrap:
            message = f"Bad request as received: {text.decode('latin-1')}"
            body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
            await peer.send(
                answer(body, status=status, headers=[("content-type", "application/json")])
            )
        else:
            await peer.send(answer(text, status=status, headers=[("content-type", "text/plain")]))

    return script


def key_of(head: bytes, keys: tuple[str, ...]) -> str:
    found = [key for key in keys if key.encode() in head]
    assert len(found) == 1
    return found[0]


ROUTES = [
    pytest.param("/v1/chat/completions", CHAT, "openai", False, OPENAI_KEYS, id="openai"),
    pytest.param(NATIVE, GENERATE, "gemini", True, GEMINI_KEYS, id="gemini-native"),
    pytest.param(
        "/v1/chat/completions", GEMINI_CHAT, "gemini", False, GEMINI_KEYS, id="gemini-openai"
    ),
]


@pytest.mark.parametrize("wrap", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("status", [400, 404, 422, 500, 502])
@pytest.mark.parametrize(("path", "body", "token", "as_google", "keys"), ROUTES)
async def test_a_key_echoed_in_an_error_is_masked(
    rig: Rig,
    status: int,
    wrap: bool,
    path: str,
    body: bytes,
    token: str,
    as_google: bool,
    keys: tuple[str, ...],
) -> None:
    rig.reset(echoing(status, wrap))
    passed = await rig.send("POST", path, body=body, token=token, as_google=as_google)  # no key
    assert passed.status == status
    # the answer is the last attempt's (a 5xx is retried on other keys first)
    used = key_of(rig.upstream.seen[-1].head, keys)
    assert mask(used).encode() in passed.body
    assert b"HTTP/1.1\\r\\n" in passed.body if wrap else b" HTTP/1.1\r\n" in passed.body
    expected = 1 if status < 500 else 3  # on_server_error.attempts: 3 tries
    assert len(rig.upstream.seen) == expected
    rig.assert_tokens_stayed()
    rig.assert_intact()
