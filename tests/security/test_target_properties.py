"""Properties of the request-target checks (`providers.target`) on generated raw targets.

Whatever bytes a client puts in its path and query, `checked_path`/`checked_query` either refuse
them or return what, written into a request line, two independent HTTP/1.1 parsers (h11 and
httptools, the one uvicorn and the gateway's client use) read back as exactly one request with
exactly that target; the path holds no dot-segment, control character, space, `#`, `\\` or
extra `/` even after percent-decoding, and decoding it twice gives what decoding it once does
(no double encoding); the query holds no `key`/`api_key` parameter in any spelling. A path the
route tables match is one of the shapes they are meant to allow."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote_plus, unquote_to_bytes

import h11
import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmgateway.config.settings import ProviderSettings
from llmgateway.providers import target
from llmgateway.providers.routes import tables
from tests.security.edge import edge_settings

pytestmark = pytest.mark.security

UNRESERVED = "ABCXYZabcxyz0129-._~"
SUB_DELIMS = "!$&'()*+,;="
PCHAR = UNRESERVED + SUB_DELIMS + ":@"
HEX = "0123456789ABCDEFabcdef"
INTERESTING_ESCAPES = [
    "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%3f", "%3F", "%23", "%20", "%0d", "%0D",
    "%0a", "%0A", "%00", "%09", "%7f", "%7F", "%e2%82%ac", "%6b", "%6B", "%2", "%", "%zz",
]  # fmt: skip
ODD = ["\r", "\n", "\r\n", "\x00", " ", "#", "\\", "?", ".", "..", "/", "//", "\x7f", "\t"]
WORDS = [
    "v1", "v1beta", "models", "chat", "completions", "files", "gemini-2.5-flash",
    "imagen-3.0-generate-002", ":generateContent", ":streamGenerateContent", ":predict",
    "rerank", "key", "api_key", "KEY", "=", "&", ";", "alt=sse", "admin",
]  # fmt: skip
PREFIXES = ["/v1/", "/v1beta/", "/v1/models/", "/v1beta/models/", "/v1/files/", "/v1/chat/", "/"]

percent = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(HEX), st.sampled_from(HEX))
fragment = st.one_of(
    st.text(PCHAR, min_size=1, max_size=4),
    percent,
    st.sampled_from(INTERESTING_ESCAPES),
    st.sampled_from(ODD),
    st.sampled_from(WORDS),
    st.text(min_size=1, max_size=2),  # any code point: non-ASCII included
)


def encoded(pieces: list[str]) -> bytes:
    return "".join(pieces).encode("utf-8", "surrogatepass")


MODELS = ["gemini-2.5-flash", "imagen-3.0-generate-002"]
# near misses of the routes: real collections and methods, mangled models and suffixes
route_like = st.builds(
    lambda version, collection, model, suffix: (version + collection).encode()
    + encoded(model)
    + suffix.encode(),
    st.sampled_from(["/v1beta", "/v1"]),
    st.sampled_from(["/models/"] * 4 + ["/tunedModels/", "/cachedContents/", "/files/", "/"]),
    st.one_of(
        st.sampled_from([*MODELS, "x", ""]).map(lambda word: [word]),
        st.sampled_from(MODELS).map(lambda word: [word]),
        st.lists(fragment, max_size=3),
    ),
    st.sampled_from(
        [":generateContent", ":streamGenerateContent", ":predict", ":countTokens", "", "/x",
         ":generateContent/..", "/chat/completions", "completions", "/rerank", ":", "%3Apredict"]
    ),
)  # fmt: skip
openai_like = st.builds(
    lambda name, tail: b"/v1/" + name.encode() + encoded(tail),
    st.sampled_from(
        ["chat/completions", "completions", "embeddings", "responses", "audio/transcriptions",
         "images/edits", "rerank", "models", "files", "batches", "chat/completions/x"]
    ),
    st.lists(fragment, max_size=2),
)  # fmt: skip
raw_paths = st.one_of(
    route_like,
    openai_like,
    st.builds(
        lambda prefix, pieces: prefix.encode() + encoded(pieces),
        st.sampled_from(PREFIXES),
        st.lists(fragment, max_size=12),
    ),
    st.binary(max_size=40).map(lambda tail: b"/v1/" + tail),
    st.binary(max_size=40),
)
KEY_NAMES = [
    "key", "KEY", "Key", "%6Bey", "%6b%65%79", "ke%79", "+key", "key+", "key%20", "%20key",
    "api_key", "API_KEY", "api%5Fkey", "api%5fKEY", "Api_Key+", "k", "keys", "alt", "%4B%45%59",
]  # fmt: skip
credential_like = st.lists(
    st.builds(
        lambda name, value, sep: name.encode() + value + sep,
        st.sampled_from(KEY_NAMES),
        st.sampled_from([b"", b"=", b"=a", b"=sse", b"=%3D", b"=key=x"]),
        st.sampled_from([b"&", b";", b"&&", b""]),
    ),
    max_size=5,
).map(b"".join)
raw_queries = st.one_of(
    credential_like,
    st.lists(fragment, max_size=12).map(encoded),
    st.lists(
        st.builds(
            lambda name, value: encoded(name) + b"=" + encoded(value),
            st.lists(fragment, min_size=1, max_size=3),
            st.lists(fragment, max_size=3),
        ),
        max_size=4,
    ).map(b"&".join),
    st.binary(max_size=40),
)


def parses_as_one_request(line_target: bytes) -> None:
    """`POST {target} HTTP/1.1` with an empty body is exactly one request, with that target,
    and nothing left over, for h11 and for httptools."""
    data = b"POST " + line_target + b" HTTP/1.1\r\nhost: upstream\r\ncontent-length: 0\r\n\r\n"
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    request = connection.next_event()
    assert isinstance(request, h11.Request)
    assert request.target == line_target
    assert isinstance(connection.next_event(), h11.EndOfMessage)
    assert connection.next_event() is h11.NEED_DATA
    assert connection.trailing_data == (b"", False)

    class Seen:
        def __init__(self) -> None:
            self.urls: list[bytes] = []
            self.messages = 0

        def on_url(self, url: bytes) -> None:
            self.urls.append(url)

        def on_message_complete(self) -> None:
            self.messages += 1

    seen = Seen()
    httptools.HttpRequestParser(seen).feed_data(data)
    assert (b"".join(seen.urls), seen.messages) == (line_target, 1)


def path_is_clean(path: str) -> None:
    raw = path.encode("ascii")
    once = unquote_to_bytes(raw)
    for segments in (raw.split(b"/"), once.split(b"/")):
        assert b"." not in segments
        assert b".." not in segments
    assert unquote_to_bytes(once) == once  # no double encoding: a second decoding changes nothing
    assert once.count(b"/") == raw.count(b"/")  # no encoded slash
    assert not re.search(rb"[\x00-\x20#\\\x7f]", once)


def no_credential(query: str) -> None:
    pieces = [piece for part in query.split("&") for piece in part.split(";") if piece]
    for piece in pieces:
        name = unquote_plus(piece.partition("=")[0]).strip().lower()
        assert name not in ("key", "api_key")


@settings(max_examples=400, deadline=None)
@given(raw_paths, raw_queries)
@example(b"/v1/chat/completions%20HTTP/1.1%0D%0Ahost:%20x%0D%0A%0D%0A", b"")
@example(b"/v1/files/%25%32%65%25%32%65", b"")
@example(b"/v1/files/a%3Fkey=x", b"key=a&alt=sse")
@example(b"/v1beta/models/x:streamGenerateContent", b"%6Bey=a;alt=sse&API_KEY=b&+key=c")
@example(b"/v1/%2e%2E/admin", b"a=%0d%0a")
def test_what_passes_is_one_request_with_that_target(raw_path: bytes, raw_query: bytes) -> None:
    path = target.checked_path(raw_path)
    query = target.checked_query(raw_query)
    if path is not None:
        assert path.encode("ascii") == raw_path  # forwarded byte for byte
        path_is_clean(path)
        parses_as_one_request(path.encode())
    if query is not None:
        no_credential(query)
        kept = [part for part in query.split("&") if part]
        assert all(part in raw_query.decode("ascii").split("&") for part in kept)
    if path is not None and query is not None:
        built = f"{path}?{query}" if query else path
        parses_as_one_request(built.encode())


@pytest.fixture(scope="module")
def provider_tables(tmp_path_factory: pytest.TempPathFactory) -> list[ProviderSettings]:
    folder: Path = tmp_path_factory.mktemp("tables")
    routes = ["/v1/files/*", "GET /v1beta/corpora/*"]
    policy = {"allowed_routes": routes}
    found = edge_settings(folder, "http://127.0.0.1:9", openai_policy=policy, gemini_policy=policy)
    return list(found.providers.values())


OPENAI_BUILTIN = {
    "chat/completions", "completions", "embeddings", "responses", "moderations", "audio/speech",
    "audio/transcriptions", "audio/translations", "images/generations", "images/edits",
    "images/variations",
}  # fmt: skip
GEMINI_OPENAI = {"chat/completions", "embeddings", "images/generations"}
GEMINI_METHODS = "generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents"


def allowed_shape(provider: ProviderSettings, surface: str, method: str, path: str) -> bool:
    """The shapes of request the route tables are meant to forward, written independently."""
    if provider.gateway_policy.allowed_routes and re.fullmatch(r"/v1/files/[^/]*", path):
        return True  # the operator's `/v1/files/*`, any method
    if surface == "openai":
        builtin = GEMINI_OPENAI if provider.provider_type == "gemini" else OPENAI_BUILTIN
        own = {"rerank"} if provider.provider_type == "openai_like" else set()
        return method == "POST" and path.removeprefix("/v1/") in builtin | own
    version = r"/v1(?:beta)?"
    if method == "GET" and re.fullmatch(rf"{version}/models/[^/:]+", path):
        return True
    if method == "GET" and re.fullmatch(r"/v1beta/corpora/[^/]*", path):
        return True
    return method == "POST" and bool(
        re.fullmatch(rf"{version}/models/[^/:]+:(?:{GEMINI_METHODS}|predict)", path)
    )


@settings(max_examples=600, deadline=None)
@given(raw_paths, st.sampled_from(["POST", "POST", "GET", "DELETE", "PUT"]))
@example(b"/v1/files/a%3Fkey=x", "POST")
@example(b"/v1/files/a/b", "GET")
@example(b"/v1/models/x/../../files", "GET")
@example(b"/v1beta/models/a/b:generateContent", "POST")
@example(b"/v1beta/models/gemini-2.5-flash:predict", "POST")
@example(b"/v1beta/tunedModels/x:generateContent", "POST")
def test_a_matched_path_is_an_allowed_shape(
    provider_tables: list[ProviderSettings], raw_path: bytes, method: str
) -> None:
    path = target.checked_path(raw_path)
    if path is None:
        return
    for provider in provider_tables:
        for surface, table in tables(provider).items():
            match = table.match(method, path)
            if match is None:
                continue
            if match.route.answer != "forward":  # answered by the gateway: no key involved
                assert method == "GET"
                assert re.fullmatch(r"/v1(?:beta)?/models(?:/.+)?", path)
                continue
            assert allowed_shape(provider, surface, method, path), (surface, method, path)
            if match.route.only is not None:  # a model's own suffix route
                assert path.endswith((":predict", "/rerank"))
