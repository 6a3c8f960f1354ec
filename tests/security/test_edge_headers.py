"""Which headers cross the gateway, one header at a time, over a real socket against the real
gateway: what reached the upstream is read from its raw request head.

Toward the upstream only what the SDKs send to describe a request crosses (an allow-list);
credentials, cookies, the client's account, hop-by-hop and proxy headers, and anything unknown
stay behind, and `accept-encoding` is always `identity`. Toward the client, the key's account
(organization, project, rate-limit counters) and the upstream's cookies stay behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmgateway.testing.hostile import Peer, Request, Script, answer
from tests.security.edge import (
    CHAT,
    GEMINI_TOKEN,
    GENERATE,
    OPENAI_KEYS,
    OPENAI_TOKEN,
    Rig,
    build_request,
    openai_error,
    read_response,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

MARKER = "client-marker-5e0c1b"
NATIVE = "/v1beta/models/gemini-2.5-flash:generateContent"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path_factory.mktemp("headers")) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


def fields(head: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw request head: (lower-case name, value)."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    ]


def names(head: bytes) -> list[str]:
    return [name for name, _ in fields(head)]


DROPPED_OPENAI = [
    ("x-api-key", f"sk-{MARKER}-own-key"),
    ("api-key", f"{MARKER}-azure-key"),
    ("cookie", f"session={MARKER}"),
    ("openai-organization", f"org-{MARKER}"),
    ("openai-project", f"proj_{MARKER}"),
    ("forwarded", f"for=10.0.0.1;host={MARKER}"),
    ("x-forwarded-for", f"10.0.0.1, {MARKER}"),
    ("x-forwarded-host", MARKER),
    ("x-forwarded-proto", MARKER),
    ("x-real-ip", f"10.0.0.1 {MARKER}"),
    ("proxy-authorization", f"Basic {MARKER}"),
    ("te", f"trailers, {MARKER}"),
    ("x-custom", MARKER),
    ("x-goog-user-project", MARKER),
    ("x-goog-api-client", MARKER),  # Gemini native only
    ("anthropic-version", MARKER),
]


@pytest.mark.parametrize(("name", "value"), DROPPED_OPENAI, ids=[n for n, _ in DROPPED_OPENAI])
async def test_a_header_stays_behind(rig: Rig, name: str, value: str) -> None:
    answered = await rig.send("POST", "/v1/chat/completions", [(name, value)], CHAT)
    assert answered.status == 200
    head = rig.upstream_head()
    assert name not in names(head)
    assert MARKER.encode() not in head


async def test_a_second_authorization_stays_behind(rig: Rig) -> None:
    headers = [
        ("authorization", f"Bearer sk-{MARKER}"),
        ("authorization", f"Bearer {OPENAI_TOKEN}"),
    ]
    answered = await rig.send("POST", "/v1/chat/completions", headers, CHAT, token=None)
    assert answered.status == 200
    head = rig.upstream_head()
    authorizations = [value for name, value in fields(head) if name == "authorization"]
    assert len(authorizations) == 1
    assert authorizations[0].removeprefix("Bearer ") in OPENAI_KEYS
    assert MARKER.encode() not in head


async def test_the_token_as_x_goog_api_key_stays_behind_on_the_openai_surface(rig: Rig) -> None:
    headers = [("authorization", f"Bearer sk-{MARKER}")]
    answered = await rig.send("POST", "/v1/chat/completions", headers, CHAT, as_google=True)
    assert answered.status == 200
    head = rig.upstream_head()  # checks that the token did not go upstream
    assert "x-goog-api-key" not in names(head)
    assert MARKER.encode() not in head
    authorizations = [value for name, value in fields(head) if name == "authorization"]
    assert [value.removeprefix("Bearer ") in OPENAI_KEYS for value in authorizations] == [True]


async def test_headers_named_by_connection_stay_behind(rig: Rig) -> None:
    headers = [("connection", "keep-alive, x-secret"), ("x-secret", MARKER)]
    answered = await rig.send("POST", "/v1/chat/completions", headers, CHAT)
    assert answered.status == 200
    head = rig.upstream_head()
    assert "x-secret" not in names(head)
    assert MARKER.encode() not in head
    assert b"x-secret" not in head.lower()


async def test_an_upgrade_stays_behind(rig: Rig) -> None:
    answered = await rig.send("POST", "/v1/chat/completions", [("upgrade", f"h2c-{MARKER}")], CHAT)
    assert answered.status == 200
    head = rig.upstream_head()
    assert "upgrade" not in names(head)
    assert MARKER.encode() not in head
    rig.reset()
    # asked for with `connection: upgrade`, the HTTP server hands the gateway no body at all
    headers = [("connection", "upgrade"), ("upgrade", f"h2c-{MARKER}")]
    refused = await rig.send("POST", "/v1/chat/completions", headers, CHAT)
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


async def test_expect_100_continue_stays_behind(rig: Rig) -> None:
    """The client waits for the gateway's `100 Continue` before sending its body, as curl
    does; the upstream sees no `expect`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        headers = [
            ("authorization", f"Bearer {OPENAI_TOKEN}"),
            ("expect", "100-continue"),
            ("content-length", str(len(CHAT))),
        ]
        writer.write(build_request("POST", "/v1/chat/completions", headers))
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(CHAT)
        answered = await read_response(reader)
    finally:
        writer.close()
    assert (answered.status, answered.body) == (200, CHAT)
    head = rig.upstream_head()
    assert "expect" not in names(head)
    assert not any(seen.head.startswith(b"HTTP/") for seen in rig.upstream.seen)


async def test_the_clients_host_stays_behind(rig: Rig) -> None:
    answered = await rig.send("POST", "/v1/chat/completions", [("host", f"{MARKER}.example")], CHAT)
    assert answered.status == 200
    host = [value for name, value in fields(rig.upstream_head()) if name == "host"]
    assert host == [f"127.0.0.1:{rig.upstream.port}"]


KEPT_OPENAI = [
    ("content-type", "application/json; charset=utf-8"),
    ("accept", f"application/json, {MARKER}"),
    ("user-agent", f"OpenAI/Python 1.99.0 {MARKER}"),
    ("x-stainless-lang", f"python-{MARKER}"),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-package-version", MARKER),
    ("openai-beta", f"assistants=v2,{MARKER}"),
    ("idempotency-key", f"stainless-python-retry-{MARKER}"),
    ("http-referer", f"https://{MARKER}.example"),  # OpenRouter's app attribution
    ("x-title", MARKER),
]


@pytest.mark.parametrize(("name", "value"), KEPT_OPENAI, ids=[n for n, _ in KEPT_OPENAI])
async def test_a_header_the_sdk_sends_reaches_the_upstream(rig: Rig, name: str, value: str) -> None:
    answered = await rig.send("POST", "/v1/chat/completions", [(name, value)], CHAT)
    assert answered.status == 200
    assert (name, value) in fields(rig.upstream_head())


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("x-goog-api-client", f"google-genai-sdk/1.0 gl-python/3.12 {MARKER}", True),
        ("user-agent", f"google-genai-sdk/1.0 {MARKER}", True),
        ("content-type", "application/json", True),
        ("authorization", f"Bearer {MARKER}", False),
        ("x-goog-user-project", MARKER, False),
        ("x-goog-request-params", MARKER, False),
        ("openai-beta", MARKER, False),
        ("x-stainless-lang", MARKER, True),  # the SDK prefix crosses on every surface
        ("cookie", MARKER, False),
    ],
)
async def test_gemini_native_headers(rig: Rig, name: str, value: str, kept: bool) -> None:
    answered = await rig.send(
        "POST", NATIVE, [(name, value)], GENERATE, token="gemini", as_google=True
    )
    assert answered.status == 200
    head = rig.upstream_head()
    assert ((name, value) in fields(head)) is kept
    if not kept:
        assert MARKER.encode() not in head
    keys = [v for n, v in fields(head) if n == "x-goog-api-key"]
    assert len(keys) == 1
    assert keys[0] != GEMINI_TOKEN
    assert "authorization" not in names(head)


@pytest.mark.parametrize("value", ["gzip, deflate, br, zstd", "identity", "*", None])
async def test_the_upstream_is_always_asked_for_identity(rig: Rig, value: str | None) -> None:
    headers = [] if value is None else [("accept-encoding", value)]
    answered = await rig.send("POST", "/v1/chat/completions", headers, CHAT)
    assert answered.status == 200
    encodings = [v for n, v in fields(rig.upstream_head()) if n == "accept-encoding"]
    assert encodings == ["identity"]


ACCOUNT = [
    ("openai-organization", "org-of-the-key-owner"),
    ("openai-project", "proj_of_the_key_owner"),
    ("x-ratelimit-remaining-requests", "4999"),
    ("x-ratelimit-limit-tokens", "2000000"),
    ("x-ratelimit-reset-requests", "12ms"),
    ("anthropic-organization-id", "00000000-key-owner"),
    ("anthropic-ratelimit-requests-remaining", "49"),
    ("set-cookie", "__cf_bm=of-the-key-owner; path=/"),
    ("x-request-id", "req_upstream_of_the_key_owner"),
    ("server", "upstream-server"),
    ("via", "1.1 upstream-proxy"),
    ("alt-svc", 'h3=":443"'),
]
STAYS = {name for name, _ in ACCOUNT}


def account_answer(status: int, content_type: str, body: bytes) -> bytes:
    return answer(body, status=status, headers=[("content-type", content_type), *ACCOUNT])


async def streamed_with_account(request: Request, peer: Peer) -> None:
    """A server-sent event stream (chunked) carrying the account's headers."""
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in ACCOUNT)
    event = b'data: {"choices":[]}\n\n'
    await peer.send(head.encode() + b"\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(account_answer(200, "application/json", b'{"ok":1}'), id="whole"),
        pytest.param(streamed_with_account, id="stream"),
        pytest.param(account_answer(400, "application/json", b'{"error":{}}'), id="client-error"),
        pytest.param(account_answer(500, "application/json", b'{"error":{}}'), id="server-error"),
    ],
)
async def test_the_keys_account_stays_behind_on_the_way_back(rig: Rig, script: Script) -> None:
    rig.reset(script)
    answered = await rig.send("POST", "/v1/chat/completions", body=CHAT)
    assert answered.status in (200, 400, 500)
    assert not STAYS & {name for name, _ in answered.headers} - {"x-request-id"}
    assert answered.header("x-request-id") != "req_upstream_of_the_key_owner"
    assert b"of-the-key-owner" not in answered.raw
    assert b"of_the_key_owner" not in answered.raw
    assert b"4999" not in answered.raw
