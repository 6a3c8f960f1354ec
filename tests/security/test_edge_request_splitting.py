"""Request splitting through the request target, over a real socket against the real gateway.

The reproduced critical bug: a client put an encoded line break in the path
(`/v1/chat/completions%20HTTP/1.1%0D%0Ahost:…`); decoded and written upstream, it ended the
request line early and started a request of the client's choosing on the gateway's connection,
authenticated with a pooled key. Every such target is refused 400 `invalid_path` before a key is
taken, in the route's error shape; raw control bytes never get past the HTTP server (400, and
the connection closed). Each attack is sent six times: no answer ever holds a pooled key, the
upstream never sees a request, and no key or breaker changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.security.edge import (
    CHAT,
    GENERATE,
    OPENAI_TOKEN,
    Rig,
    build_request,
    closed_by_server,
    gemini_error,
    openai_error,
    read_response,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

REPEAT = 6
SMUGGLED = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
    len(CHAT),
    CHAT,
)


def split(prefix: str, line_break: str = "%0D%0A") -> str:
    """`prefix` followed by an encoded end of the request line and a whole second request."""
    second = (
        f"POST /v1/files HTTP/1.1{line_break}host: x{line_break}"
        f"content-length: {len(CHAT)}{line_break}{line_break}{CHAT.decode()}"
    )
    encoded = second.replace(" ", "%20").replace('"', "%22").replace("{", "%7B")
    encoded = encoded.replace("}", "%7D").replace("[", "%5B").replace("]", "%5D")
    return f"{prefix}%20HTTP/1.1{line_break}{encoded}"


OPENAI_TARGETS = [
    pytest.param(split("/v1/chat/completions"), id="crlf"),
    pytest.param(split("/v1/chat/completions", "%0d%0a"), id="crlf-lower"),
    pytest.param(split("/v1/chat/completions", "%0A"), id="lf"),
    pytest.param(split("/v1/chat/completions", "%0D"), id="cr"),
    pytest.param("/v1/chat/completions%00", id="nul"),
    pytest.param("/v1/chat/completions%09", id="tab"),
    pytest.param("/v1/chat/completions%20", id="space"),
    pytest.param("/v1/chat/completions%7F", id="del"),
    # under a wildcard route the operator allowed, where a target is otherwise forwarded
    pytest.param(split("/v1/files/file-1"), id="crlf-in-an-allowed-route"),
    pytest.param("/v1/files/file-1%0Ax-api-key:%20mine", id="lf-header-in-an-allowed-route"),
    pytest.param("/v1/files/file-1%00.txt", id="nul-in-an-allowed-route"),
]
GEMINI_TARGETS = [
    pytest.param(
        "/v1beta/models/gemini-2.5-flash:generateContent%0D%0Ax-goog-api-key:%20stolen",
        id="crlf-after-the-method",
    ),
    pytest.param("/v1beta/models/gemini-2.5-flash%0A:generateContent", id="lf-in-the-model"),
    pytest.param(split("/v1beta/models/gemini-2.5-flash:generateContent"), id="crlf-request"),
]
# raw bytes the HTTP server itself refuses: the gateway never sees them
RAW_TARGETS = [
    pytest.param(b"/v1/files/a\nb", id="raw-lf"),
    pytest.param(b"/v1/files/a\rb", id="raw-cr"),
    pytest.param(b"/v1/files/a\x00b", id="raw-nul"),
    pytest.param(b"/v1/files/a\tb", id="raw-tab"),
    pytest.param(b"/v1/files/a b", id="raw-space"),
    pytest.param(b"/v1/files/a\x7fb", id="raw-del"),
    pytest.param(b"/v1/files/\xe2\x82\xac", id="raw-utf8"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    folder = tmp_path_factory.mktemp("splitting")
    policy = {"allowed_routes": ["/v1/files", "/v1/files/*"]}
    async with running_rig(folder, openai_policy=policy) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


@pytest.mark.parametrize("target", OPENAI_TARGETS)
async def test_an_encoded_line_break_in_the_path_is_refused(rig: Rig, target: str) -> None:
    for _ in range(REPEAT):
        refused = await rig.send("POST", target, [("content-type", "application/json")], CHAT)
        openai_error(refused, 400, "invalid_path")
        rig.assert_untouched()


@pytest.mark.parametrize("target", GEMINI_TARGETS)
async def test_an_encoded_line_break_in_a_gemini_path_is_refused(rig: Rig, target: str) -> None:
    for _ in range(REPEAT):
        refused = await rig.send("POST", target, [], GENERATE, token="gemini", as_google=True)
        gemini_error(refused, 400, "invalid_path")
        rig.assert_untouched()


@pytest.mark.parametrize("target", RAW_TARGETS)
async def test_raw_control_bytes_in_the_target_never_reach_the_gateway(
    rig: Rig, target: bytes
) -> None:
    for _ in range(REPEAT):
        headers = [("authorization", f"Bearer {OPENAI_TOKEN}")]
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
        try:
            writer.write(build_request("POST", target, headers, CHAT))
            refused = await read_response(reader)
            assert refused.status == 400
            assert refused.closes
            assert await closed_by_server(reader)
        finally:
            writer.close()
        rig.assert_untouched()


async def test_a_split_attempt_leaves_a_keep_alive_connection_in_step(rig: Rig) -> None:
    """The smuggled request rides in the body of a refused one: it is read as that body and
    dropped, and the next request on the connection is answered as itself."""
    auth = ("authorization", f"Bearer {OPENAI_TOKEN}")
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        for n in range(REPEAT):
            attack = build_request("POST", split("/v1/chat/completions"), [auth], SMUGGLED)
            writer.write(attack)
            openai_error(await read_response(reader), 400, "invalid_path")
            rig.assert_untouched()
            mine = CHAT.replace(b'"hi"', b'"request-%d"' % n)
            writer.write(build_request("POST", "/v1/chat/completions", [auth], mine))
            answered = await read_response(reader)
            assert answered.status == 200
            assert answered.body == mine  # the upstream's answer to this very request
            assert len(rig.upstream.seen) == 1
            assert rig.upstream.seen[0].body == mine
            rig.assert_tokens_stayed()
            rig.reset()
    finally:
        writer.close()
    rig.assert_intact()
