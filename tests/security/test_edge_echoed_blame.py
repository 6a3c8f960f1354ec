"""A client's own words echoed back in an upstream error must not make the gateway blame a key.

Real upstreams quote the request in their error messages: Gemini names an unknown field of the
body ("Invalid JSON payload received. Unknown name \\"…\\": Cannot find field."), OpenRouter's
moderation 403 carries the flagged input. `outcomes.classify` looks for its key-fault phrases
(`API key not valid`, `API_KEY_INVALID`, `does not have access`, `billing`…) anywhere in the
body, so a client who writes such a phrase into its request gets every key it is retried on
marked invalid: one request, a whole pool (up to `on_key_error.attempts` keys) out until
the Keeper's probes restore them, in every gateway sharing the store.

The verdicts that blame a key read only the error's own fields at fixed places
(`outcomes._Fields`), and a message only from its start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llmgateway.testing.hostile import Peer, Request, answer
from tests.security.edge import JSON, Rig, running_rig

pytestmark = pytest.mark.security

NATIVE = "/v1beta/models/gemini-2.5-flash:generateContent"


async def gemini_unknown_field(request: Request, peer: Peer) -> None:
    """Gemini's answer to a body with a field it does not know: the field's name, quoted."""
    unknown = [name for name in orjson.loads(request.body) if name != "contents"]
    message = f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    error = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    await peer.send(answer(orjson.dumps(error), status=400, headers=JSON))


async def openrouter_moderation(request: Request, peer: Peer) -> None:
    """OpenRouter's moderation refusal: the flagged input is quoted in the metadata."""
    text = orjson.loads(request.body)["messages"][0]["content"]
    error = {
        "error": {
            "code": 403,
            "message": "gpt-4o-mini requires moderation on OpenRouter. Your input was flagged.",
            "metadata": {"reasons": ["harassment"], "flagged_input": text[:100]},
        }
    }
    await peer.send(answer(orjson.dumps(error), status=403, headers=JSON))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as rig:
        yield rig


async def test_a_field_name_echoed_by_gemini_blames_no_key(rig: Rig) -> None:
    rig.reset(gemini_unknown_field)
    body = b'{"contents": [], "API key not valid": 1}'
    passed = await rig.send("POST", NATIVE, body=body, token="gemini", as_google=True)
    assert passed.status == 400  # the client's mistake, passed on
    assert len(rig.upstream.seen) == 1
    rig.assert_intact()


async def test_a_flagged_input_echoed_by_openrouter_blames_no_key(rig: Rig) -> None:
    rig.reset(openrouter_moderation)
    words = "your account does not have access, see billing"
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words}]})
    refused = await rig.send("POST", "/v1/chat/completions", body=body)
    assert refused.status == 403
    assert len(rig.upstream.seen) == 1
    rig.assert_intact()
