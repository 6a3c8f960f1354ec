"""What a client can hide in the request target, over a real socket against the real gateway.

An encoded `?` stays encoded (it never becomes a query the upstream reads), a fragment never
goes upstream, and dot-segments (plain, encoded, double-encoded), encoded `/` or `\\`, `%23`
and stray `%` are refused 400 `invalid_path` before a key is taken. In the query no spelling of
`key`/`api_key` reaches the upstream (the real key travels in a header), and bytes outside
RFC 3986 are refused 400 `invalid_query`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

import pytest
import pytest_asyncio

from tests.security.edge import (
    CHAT,
    GEMINI_KEYS,
    GEMINI_TOKEN,
    GENERATE,
    Rig,
    build_request,
    gemini_error,
    openai_error,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    folder = tmp_path_factory.mktemp("target")
    policy = {"allowed_routes": ["/v1/files/*"]}
    async with running_rig(folder, openai_policy=policy) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


def request_line(rig: Rig) -> bytes:
    """The request line of the one request the upstream saw."""
    return rig.upstream_head().split(b"\r\n", 1)[0]


def query_names(target: str) -> list[str]:
    """Every parameter name of a target's query, decoded, lower-case, stripped, split on `&`
    and `;` alike (what the most lenient server would read)."""
    _, _, query = target.partition("?")
    pieces = [piece for part in query.split("&") for piece in part.split(";") if piece]
    return [unquote_plus(piece.partition("=")[0]).strip().lower() for piece in pieces]


@pytest.mark.parametrize(
    "path",
    ["/v1/files/a%3Fkey=SMUGGLED", "/v1/files/a%3fkey=SMUGGLED", "/v1/files/a%3Fapi_key=x&b=c"],
)
async def test_an_encoded_question_mark_stays_encoded(rig: Rig, path: str) -> None:
    answered = await rig.send("POST", path)
    assert answered.status == 200
    assert request_line(rig) == f"POST {path} HTTP/1.1".encode()
    assert "?" not in rig.upstream.seen[0].target
    rig.assert_intact()


async def test_an_encoded_question_mark_opens_no_route(rig: Rig) -> None:
    refused = await rig.send("POST", "/v1/chat/completions%3Fkey=x", body=CHAT)
    openai_error(refused, 404, "not_found")
    rig.assert_untouched()


@pytest.mark.parametrize(
    "target", ["/v1/files/a#b", "/v1/files/a#/../../admin?key=stolen", "/v1/files/a#%0D%0Ax: y"]
)
async def test_a_fragment_never_goes_upstream(rig: Rig, target: str) -> None:
    # the HTTP server drops the fragment before the gateway sees the target
    answered = await rig.send("POST", target.replace(" ", "%20"))
    assert answered.status == 200
    assert request_line(rig) == b"POST /v1/files/a HTTP/1.1"
    rig.assert_intact()


INVALID_PATHS = [
    "/v1/files/a%23b",
    "/v1/chat/completions%23",
    "/v1/../admin",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/%2E./x",
    "/v1/.%2e/x",
    "/v1/./chat/completions",
    "/v1/chat/completions/.",
    "/v1/chat/completions/..",
    "/v1/files/..",
    "/v1/files/%2e",
    "/v1/files/a/../../../admin",
    "/v1/files/a%2Fb",
    "/v1/files/a%2fb",
    "/v1/files/%2F..%2Fadmin",
    "/v1/files/a%5Cb",
    "/v1/files/a%5c..%5cadmin",
    "/v1/files/a\\b",
    "/v1/files/..\\admin",
    "/v1/files/%252e%252e",
    "/v1/files/%252F",
    "/v1/files/a%2541",
    "/v1/files/a%25%32%65",
    "/v1/files/%25%32%65%25%32%65",
    "/v1/files/%25%32%45.",
    "/v1/files/100%25",
    "/v1/files/%",
    "/v1/files/a%zz",
    "/v1/files/a%2",
    '/v1/files/a"b',
    "/v1/files/a<b>",
    "/v1/files/a{b}",
    "/v1/files/a|b",
    "/v1/files/a^b",
    "/v1/files/a`b",
    "/v1/files/a[b]",
]


@pytest.mark.parametrize("path", INVALID_PATHS)
async def test_smuggling_in_the_path_is_refused(rig: Rig, path: str) -> None:
    refused = await rig.send("POST", path, [("content-type", "application/json")], CHAT)
    openai_error(refused, 400, "invalid_path")
    rig.assert_untouched()


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/..%2F..%2Fadmin:generateContent",
        "/v1beta/models/%2e%2e/x:generateContent",
        "/v1beta/models/gemini-2.5-flash:generateContent/..",
        "/v1beta/cachedContents/../models/gemini-2.5-flash:generateContent",
    ],
)
async def test_smuggling_in_a_gemini_path_is_refused(rig: Rig, path: str) -> None:
    refused = await rig.send("POST", path, body=GENERATE, token="gemini", as_google=True)
    gemini_error(refused, 400, "invalid_path")
    rig.assert_untouched()


KEYLESS_QUERIES = [
    ("key=a&alt=sse", "alt=sse"),
    ("alt=sse&key=a", "alt=sse"),
    ("KEY=a&alt=sse", "alt=sse"),
    ("Key=a&alt=sse", "alt=sse"),
    ("%6Bey=a&alt=sse", "alt=sse"),
    ("%6b%65%79=a&alt=sse", "alt=sse"),
    ("ke%79=a&alt=sse", "alt=sse"),
    ("+key=a&alt=sse", "alt=sse"),
    ("key%20=a&alt=sse", "alt=sse"),
    ("key&alt=sse", "alt=sse"),
    ("api_key=a&alt=sse", "alt=sse"),
    ("API_KEY=a&alt=sse", "alt=sse"),
    ("api%5Fkey=a&alt=sse", "alt=sse"),
    ("key=a&key=b&alt=sse&api_key=c", "alt=sse"),
    ("alt=sse;key=a", None),
    ("key=a;alt=sse", None),
    ("alt=sse&x=1;api_key=a", "alt=sse"),
]


@pytest.mark.parametrize(("query", "kept"), KEYLESS_QUERIES)
@pytest.mark.parametrize("version", ["/v1beta", "/v1"])
async def test_no_key_parameter_reaches_the_upstream(
    rig: Rig, query: str, kept: str | None, version: str
) -> None:
    path = STREAM.replace("/v1beta", version)
    answered = await rig.send(
        "POST", f"{path}?{query}", body=GENERATE, token="gemini", as_google=True
    )
    assert answered.status == 200
    target = rig.upstream.seen[0].target
    assert target.startswith(f"{path}")
    assert not {"key", "api_key"} & set(query_names(target)), target
    if kept is not None:
        assert target == f"{path}?{kept}"
    # the real key went as a header, the client's token nowhere
    head = rig.upstream_head()
    assert sum(key.encode() in head for key in GEMINI_KEYS) == 1
    assert b"\r\nx-goog-api-key: AIza" in head
    rig.assert_intact()


async def test_the_token_sent_as_key_parameter_stays_at_the_gateway(rig: Rig) -> None:
    answered = await rig.send(
        "POST", f"{STREAM}?alt=sse&key={GEMINI_TOKEN}", body=GENERATE, token=None
    )
    assert answered.status == 200
    assert rig.upstream.seen[0].target == f"{STREAM}?alt=sse"
    rig.assert_tokens_stayed()
    rig.assert_intact()


async def test_the_openai_surface_forwards_a_query_without_its_keys(rig: Rig) -> None:
    answered = await rig.send(
        "POST", "/v1/chat/completions?api-version=1&key=x&Api_Key=y", body=CHAT
    )
    assert answered.status == 200
    assert rig.upstream.seen[0].target == "/v1/chat/completions?api-version=1"
    rig.assert_intact()


INVALID_QUERIES = [
    b'a="b"',
    b"a=<b>",
    b"a={b}",
    b"a=|",
    b"a=\\",
    b"a=^",
    b"a=`",
    b"a=[0]",
    b"a=%zz",
    b"a=%",
    b"a=%2",
    b"key=%",
]


@pytest.mark.parametrize("query", INVALID_QUERIES)
async def test_raw_bytes_outside_rfc_3986_in_the_query_are_refused(rig: Rig, query: bytes) -> None:
    refused = await rig.send("POST", b"/v1/chat/completions?" + query, body=CHAT)
    openai_error(refused, 400, "invalid_query")
    rig.assert_untouched()


@pytest.mark.parametrize("query", [b"a=\xff", b"a=\x7f", b"a=\x00", b"a b", b"a=\xe2\x82\xac"])
async def test_raw_bytes_the_server_refuses_never_reach_the_gateway(rig: Rig, query: bytes) -> None:
    answered = await rig.raw(build_request("POST", b"/v1/chat/completions?" + query, body=CHAT))
    assert answered.status == 400
    assert answered.closes
    rig.assert_untouched()
