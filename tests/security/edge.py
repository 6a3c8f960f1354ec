"""The real gateway behind a real socket, for the edge attack tests (`test_edge_*.py`).

- `build_request` writes the exact bytes of a request (an HTTP client would refuse or
  re-encode the odd targets these tests send), `exchange` sends them over a fresh connection
  and reads one answer (`RawResponse`: status, headers, body, and whether the server closed).
  Every answer read here is checked: no pooled key, nor the part of one a mask hides, in it.
- `running_rig` starts the gateway (`create_app` under uvicorn on loopback) with an
  `openai_like` and a `gemini` provider, both on one `HostileUpstream` (answering with the
  request's body), and hands back a `Rig` that sends requests with a provider's token and
  checks the rest of the vault: no gateway token upstream, every key healthy or untested, no
  key in flight and every breaker closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmgateway.conductor.app import Conductor, create_app
from llmgateway.conductor.call import Provider
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.core.resilience import BreakerState
from llmgateway.observe.masking import mask
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.hostile import HostileUpstream, Peer, Request, Script, answer

OPENAI_TOKEN = "edge-openai-token-7f3a9c1e55b2"
GEMINI_TOKEN = "edge-gemini-token-0c8d2e6b4a91"
TOKENS = {"openai": OPENAI_TOKEN, "gemini": GEMINI_TOKEN}
# distinct cores, so that a leak of any part between the masked prefix and the last four shows
OPENAI_KEYS = (
    "sk-edgeA-Q9v2Lm4Tx8Rb1Nc6Yw3Kp0a1",
    "sk-edgeB-H5j7Ds2Fg9Zq4Vu1Xe8Mo0b2",
    "sk-edgeC-W3n6Pt1Ly5Gk8Rc2Ha9Ji0c3",
)
GEMINI_KEYS = (
    "AIzaSyEdgeD7u4Kq1Wm9Zx3Cv6Bn2Lp8d4",
    "AIzaSyEdgeE2r8Ty5Ui1Op7As4Df9Gh3e5",
    "AIzaSyEdgeF6h3Jk9Lz2Xc5Vb8Nm1Qw4f6",
)
OPENAI_MODELS: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"endpoint_suffix": "/chat/completions"},
    "gpt-4o": {"endpoint_suffix": "/chat/completions"},
    "whisper-1": {"endpoint_suffix": "/audio/transcriptions"},
    "rerank-1": {"endpoint_suffix": "/rerank"},  # its own route: /v1/rerank, for it alone
}
GEMINI_MODELS: dict[str, dict[str, Any]] = {
    "gemini-2.5-flash": {"endpoint_suffix": ":generateContent"},
    "imagen-3.0-generate-002": {"endpoint_suffix": ":predict"},  # `:predict`, for it alone
}
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
GENERATE = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
HEALTHY = frozenset({"healthy", "untested"})
JSON = (("content-type", "application/json"),)


async def echo_body(request: Request, peer: Peer) -> None:
    """The default script: 200 with the request's own body (never its head, which holds the
    pooled key: a success body is relayed as it is). What arrived is in `upstream.seen`."""
    await peer.send(answer(request.body or b"{}", headers=JSON))


Header = tuple[str | bytes, str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def build_request(
    method: str, target: str | bytes, headers: Iterable[Header] = (), body: bytes = b""
) -> bytes:
    """The exact bytes of one HTTP/1.1 request: the request line with `target` as given, the
    headers in order (a `content-length` is added unless one is given), then `body`."""
    lines = [b"%s %s HTTP/1.1" % (method.encode(), _bytes(target))]
    named = [(_bytes(name), _bytes(value)) for name, value in headers]
    if not any(name.lower() == b"host" for name, _ in named):
        named.insert(0, (b"host", b"gateway.test"))
    if not any(name.lower() == b"content-length" for name, _ in named):
        named.append((b"content-length", b"%d" % len(body)))
    lines += [name + b": " + value for name, value in named]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True, slots=True)
class RawResponse:
    """One answer as it came off the wire (after any interim `1xx` answers, kept in `raw`)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes  # everything read for this answer, interim answers included

    def header(self, name: str) -> str | None:
        """The value of header `name` (the first one), or None."""
        for found, value in self.headers:
            if found == name.lower():
                return value
        return None

    def names(self) -> set[str]:
        return {name for name, _ in self.headers}

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def closes(self) -> bool:
        """Whether the server said this answer ends the connection."""
        return (self.header("connection") or "").lower() == "close"


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> RawResponse:
    """Read one final answer within `timeout` seconds: interim ones are skipped; the body by
    content-length, chunked, or up to the connection's end. Fails if it holds a pooled key."""
    async with asyncio.timeout(timeout):
        return await _read_response(reader)


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    raw = b""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        raw += head
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = tuple(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines[1:])
        )
        if not 100 <= status < 200:
            break
    fields = dict(headers)
    if "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
        raw += body
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            raw += chunk
            body += chunk[:-2]
            if size == 0:  # the gateway sends no trailers
                break
    else:
        body = await reader.read()
        raw += body
    assert_no_key(raw)
    return RawResponse(status, headers, body, raw)


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send `data` on a fresh connection to the gateway and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(data)
            await writer.drain()
            return await _read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the server closes the connection (EOF) within `timeout` seconds, sending
    nothing more."""
    async with asyncio.timeout(timeout):
        return await reader.read(1) == b""


def openai_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    """Check an OpenAI-shape error (`{"error": {"message", "type", "param", "code"}}`)."""
    assert response.status == status, (response.status, response.body[:300])
    assert (response.header("content-type") or "").startswith("application/json")
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def gemini_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    """Check a Gemini-shape error (`{"error": {"code", "message", "status", "details"}}`, the
    gateway's own reason in `details[0].reason`)."""
    assert response.status == status, (response.status, response.body[:300])
    assert (response.header("content-type") or "").startswith("application/json")
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert {"code", "message", "status"} <= set(error) <= {"code", "message", "status", "details"}
    assert error["code"] == status, error
    assert isinstance(error["status"], str)
    assert error["status"].isupper()
    assert error["details"][0]["reason"] == code, error
    return error


def edge_settings(
    folder: Path,
    upstream: str,
    *,
    openai_policy: dict[str, Any] | None = None,
    gemini_policy: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    breaker: bool = True,
) -> Settings:
    """Both providers on the upstream at `upstream` (`http://127.0.0.1:PORT`), three keys each,
    retries on (no backoff), the circuit breaker on with a threshold of 3 unless `breaker` is
    False; `*_policy` is merged into each provider's `gateway_policy`."""
    for name, keys in (("openai", OPENAI_KEYS), ("gemini", GEMINI_KEYS)):
        write_keys(folder / "keys" / name, keys)
    base: dict[str, Any] = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 6, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 3, "backoff_sec": 0.0},
        },
        "circuit_breaker": {"enabled": breaker, "failure_threshold": 3},
    }
    data = two_providers(
        folder,
        upstream,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        both={"timeouts": {"connect": 5, "read": 10, "total": 20}},
        openai={"models": OPENAI_MODELS, "gateway_policy": {**base, **(openai_policy or {})}},
        gemini={
            "models": GEMINI_MODELS,
            "shared_key_status": False,
            "gateway_policy": {**base, **(gemini_policy or {})},
        },
        database={"url": f"sqlite:///{folder / 'gateway.db'}"},
        gateway=gateway or {},
    )
    return Settings.model_validate(data)


@dataclass(slots=True)
class Rig:
    """A running gateway, its upstream, and the checks every attack ends with."""

    url: str
    port: int
    app: Any
    upstream: HostileUpstream
    key_ids: dict[str, int]  # pooled secret → its key id (from the store)

    @property
    def gateway(self) -> Conductor:
        gateway: Conductor = self.app.state.conductor
        return gateway

    def provider(self, name: str) -> Provider:
        return self.gateway.providers[name]

    def reset(self, script: Script | None = None) -> None:
        """Forget what the upstream saw and script it anew (`echo_body` by default)."""
        self.upstream.seen.clear()
        self.upstream.script = echo_body if script is None else script

    async def send(
        self,
        method: str,
        target: str | bytes,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        *,
        token: str | None = "openai",
        as_google: bool = False,
    ) -> RawResponse:
        """Send one request with a provider's token (`"openai"`, `"gemini"`, None for none) as
        a Bearer, or as `x-goog-api-key` when `as_google`; the answer is checked for keys."""
        sent: list[Header] = []
        if token is not None:
            secret = TOKENS[token]
            sent.append(
                ("x-goog-api-key", secret) if as_google else ("authorization", f"Bearer {secret}")
            )
        sent += headers
        return await self.raw(build_request(method, target, sent, body))

    async def raw(self, data: bytes) -> RawResponse:
        """Send exact bytes on a fresh connection; the answer is checked for keys."""
        return await exchange(self.port, data)

    def states(self) -> dict[tuple[str, str, str], str | None]:
        """Every key's state for every configured model: (provider, masked key, model) →
        state."""
        now = self.gateway.clock()
        found: dict[tuple[str, str, str], str | None] = {}
        secrets = {key: secret for secret, key in self.key_ids.items()}
        for name, provider in self.gateway.providers.items():
            for key_id in list(provider.pool.key_ids()):
                for model in provider.settings.models:
                    label = mask(secrets.get(key_id, "?"))
                    found[(name, label, model)] = provider.pool.state(key_id, model, now)
        return found

    def assert_intact(self) -> None:
        """Every key healthy or untested for every model, none in flight, every breaker
        (provider and egress) closed, and every key of the files in its pool."""
        states = self.states()
        assert len(states) == len(OPENAI_KEYS) * len(OPENAI_MODELS) + len(GEMINI_KEYS) * len(
            GEMINI_MODELS
        )
        spoilt = {where: state for where, state in states.items() if state not in HEALTHY}
        assert not spoilt, spoilt
        for provider in self.gateway.providers.values():
            pool = provider.pool
            assert all(pool.inflight(key_id) == 0 for key_id in pool.key_ids())
            assert provider.guard.state is BreakerState.CLOSED
            assert all(s is BreakerState.CLOSED for s in provider.guard.egress_states().values())

    def assert_untouched(self) -> None:
        """Nothing reached the upstream (no key was taken), and the pool is intact."""
        assert self.upstream.seen == [], [seen.head[:120] for seen in self.upstream.seen]
        self.assert_intact()

    def assert_tokens_stayed(self) -> None:
        """No gateway token ever reached the upstream."""
        for seen in self.upstream.seen:
            for token in TOKENS.values():
                assert token.encode() not in seen.head, "a gateway token went upstream"

    def upstream_head(self) -> bytes:
        """The head of the one request the upstream saw (fails unless exactly one)."""
        assert len(self.upstream.seen) == 1, len(self.upstream.seen)
        self.assert_tokens_stayed()
        return self.upstream.seen[0].head


def assert_no_key(data: bytes) -> None:
    """No pooled key, nor the part of one a mask hides, is anywhere in `data`."""
    for secret in OPENAI_KEYS + GEMINI_KEYS:
        core = secret[len(mask(secret).partition("…")[0]) : -4]
        assert secret.encode() not in data, f"the pooled key {mask(secret)} was answered"
        assert core.encode() not in data, f"the hidden part of {mask(secret)} was answered"


@contextlib.asynccontextmanager
async def running_rig(
    folder: Path, script: Script | None = None, **options: Any
) -> AsyncIterator[Rig]:
    """The gateway on a fresh HostileUpstream (`script`, `echo_body` by default); `options` go
    to `edge_settings`."""
    async with HostileUpstream(echo_body if script is None else script) as upstream:
        settings = edge_settings(folder, upstream.url, **options)
        app: Any = create_app(settings, rng=random.Random(11))  # the router, with `.state`
        async with running(app) as url:
            gateway: Conductor = app.state.conductor
            assert gateway.store is not None
            rows = (await gateway.store.snapshot()).keys
            key_ids = {row.secret: row.key_id for row in rows}
            assert set(key_ids) == {*OPENAI_KEYS, *GEMINI_KEYS}
            yield Rig(url, int(url.rsplit(":", 1)[1]), app, upstream, key_ids)
