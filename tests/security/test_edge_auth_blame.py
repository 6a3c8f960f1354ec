"""Whom a 401 or 403 on the provider's own routes blames, over a real socket against the real
gateway (a fresh gateway per test: these change key states).

- A 403 about something the request names (another project's cached content: Gemini's "The
  caller does not have permission") is the client's: 403 `forbidden`, no key blamed, and not
  retried on every key of the pool.
- A 401 that does not say why (an empty body, "no API key") doubts the key: it is ejected from
  this gateway's rotation (not marked invalid; the Keeper's probe decides) and the request is
  served by another key.
- A 401 that says the key is invalid marks that key invalid, and another key serves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from llmgateway.testing.hostile import Peer, Request, answer
from tests.security.edge import (
    CHAT,
    GEMINI_KEYS,
    GENERATE,
    HEALTHY,
    JSON,
    OPENAI_KEYS,
    Rig,
    gemini_error,
    openai_error,
    running_rig,
)

pytestmark = pytest.mark.security

NATIVE = "/v1beta/models/gemini-2.5-flash:generateContent"
PERMISSION = orjson.dumps(
    {
        "error": {
            "code": 403,
            "message": "The caller does not have permission",
            "status": "PERMISSION_DENIED",
        }
    }
)
INVALID_API_KEY = orjson.dumps(
    {
        "error": {
            "message": "Incorrect API key provided: sk-edge****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)
MISSING_KEY = orjson.dumps(
    {
        "error": {
            "message": "You didn't provide an API key.",
            "type": "invalid_request_error",
            "param": None,
            "code": "missing_api_key",
        }
    }
)
GEMINI_API_KEY_INVALID = orjson.dumps(
    {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID", "domain": "googleapis.com"}],
        }
    }
)
GEMINI_CHAT = CHAT.replace(b"gpt-4o-mini", b"gemini-2.5-flash")
OK = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]})


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as rig:
        yield rig


def first_fails(status: int, body: bytes) -> Callable[[Request, Peer], Awaitable[None]]:
    """A script: the first request gets `status` with `body`, every later one a 200."""
    answered: list[Request] = []

    async def script(request: Request, peer: Peer) -> None:
        if not answered:
            answered.append(request)
            await peer.send(answer(body, status=status, headers=JSON))
        else:
            await peer.send(answer(OK, headers=JSON))

    return script


def key_in(head: bytes, keys: tuple[str, ...]) -> str:
    """The one pooled key a request head carries."""
    found = [key for key in keys if key.encode() in head]
    assert len(found) == 1
    return found[0]


def states_of(rig: Rig, provider: str, secret: str) -> set[str | None]:
    """The states of one key over every configured model."""
    key_id = rig.key_ids[secret]
    now = rig.gateway.clock()
    pool = rig.provider(provider).pool
    models = rig.provider(provider).settings.models
    return {pool.state(key_id, model, now) for model in models}


def others_intact(rig: Rig, provider: str, keys: tuple[str, ...], blamed: str) -> None:
    for key in keys:
        if key != blamed:
            assert states_of(rig, provider, key) <= HEALTHY


@pytest.mark.parametrize(
    ("target", "token", "as_google", "body", "shape"),
    [
        pytest.param(NATIVE, "gemini", True, GENERATE, "gemini", id="native"),
        pytest.param(
            "/v1/chat/completions", "gemini", False, GEMINI_CHAT, "openai", id="openai-compat"
        ),
    ],
)
async def test_a_403_about_another_projects_resource_blames_no_key(
    rig: Rig, target: str, token: str, as_google: bool, body: bytes, shape: str
) -> None:
    rig.reset(answer(PERMISSION, status=403, headers=JSON))
    named = body[:-1] + b',"cachedContent":"cachedContents/of-another-project"}'
    refused = await rig.send("POST", target, body=named, token=token, as_google=as_google)
    check = gemini_error if shape == "gemini" else openai_error
    error = check(refused, 403, "forbidden")
    assert "caller does not have permission" not in error["message"]
    assert len(rig.upstream.seen) == 1  # not retried on every key of the pool
    rig.assert_intact()


@pytest.mark.parametrize(
    "body", [b"", b'{"detail": "nope"}', MISSING_KEY], ids=["empty", "unexplained", "missing"]
)
async def test_an_unexplained_401_ejects_the_key_and_another_serves(rig: Rig, body: bytes) -> None:
    rig.reset(first_fails(401, body))
    served = await rig.send("POST", "/v1/chat/completions", body=CHAT)
    assert (served.status, served.body) == (200, OK)
    first, second = (seen.head for seen in rig.upstream.seen)
    doubted = key_in(first, OPENAI_KEYS)
    assert key_in(second, OPENAI_KEYS) != doubted
    assert states_of(rig, "openai", doubted) == {"ejected"}  # doubted, not condemned
    others_intact(rig, "openai", OPENAI_KEYS, doubted)


async def test_a_401_saying_the_key_is_invalid_marks_it_invalid(rig: Rig) -> None:
    rig.reset(first_fails(401, INVALID_API_KEY))
    served = await rig.send("POST", "/v1/chat/completions", body=CHAT)
    assert (served.status, served.body) == (200, OK)
    first, second = (seen.head for seen in rig.upstream.seen)
    invalid = key_in(first, OPENAI_KEYS)
    assert key_in(second, OPENAI_KEYS) != invalid
    assert states_of(rig, "openai", invalid) == {"invalid"}
    others_intact(rig, "openai", OPENAI_KEYS, invalid)


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_gemini_api_key_invalid_marks_that_key_invalid(rig: Rig, status: int) -> None:
    rig.reset(first_fails(status, GEMINI_API_KEY_INVALID))
    served = await rig.send("POST", NATIVE, body=GENERATE, token="gemini", as_google=True)
    assert (served.status, served.body) == (200, OK)
    first, second = (seen.head for seen in rig.upstream.seen)
    invalid = key_in(first, GEMINI_KEYS)
    assert key_in(second, GEMINI_KEYS) != invalid
    assert states_of(rig, "gemini", invalid) == {"invalid"}
    others_intact(rig, "gemini", GEMINI_KEYS, invalid)
