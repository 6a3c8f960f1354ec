"""Client tokens under attack, over real sockets against the real gateway: a wrong token (one
with a real token's shape), an expired one, a disabled one, each refused 401 in the shape of
the API it was sent to, never echoing the token; and a client restricted to an address range
that forges X-Forwarded-For from a peer that is not a trusted proxy (403), beside the same
header from a trusted proxy (believed, and the address the access log shows)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from llmgateway.config.load import load_settings
from llmgateway.core.clients import new_secret, well_formed
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.clients_rig import ainvoke, secret_in, write_config
from tests.helpers import start_gateway

pytestmark = pytest.mark.security

EXPIRED = "gw-expired-client-token-0c7a2e9b41f5"
OFFICE = "gw-office-only-client-token-93d1b6f0e2a7"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
TOKENS: list[dict[str, Any]] = [
    {"name": "old", "token": EXPIRED, "expires": "2020-01-01"},
    {"name": "office", "token": OFFICE, "allow_ips": ["10.0.0.0/8"]},
]


async def post_as(url: str, surface: str, token: str, **headers: str) -> httpx.Response:
    """A chat request with `token` sent the way `surface`'s clients send it."""
    async with httpx.AsyncClient() as client:
        if surface == "gemini":
            return await client.post(
                f"{url}/v1beta/models/fast:generateContent",
                headers={"x-goog-api-key": token, **headers},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
        if surface == "anthropic":
            headers = {"x-api-key": token, "anthropic-version": "2023-06-01", **headers}
            return await client.post(
                f"{url}/v1/messages", headers=headers, json={**CHAT, "max_tokens": 5}
            )
        headers = {"authorization": f"Bearer {token}", **headers}
        return await client.post(f"{url}/v1/chat/completions", headers=headers, json=CHAT)


def shaped(reply: httpx.Response, surface: str, status: int) -> str:
    """The error message of `reply`, checked to be in `surface`'s shape with `status`."""
    assert reply.status_code == status, reply.text
    document: dict[str, Any] = reply.json()
    if surface == "anthropic":
        assert document["type"] == "error"
        return str(document["error"]["message"])
    error = document["error"]
    if surface == "gemini":
        assert error["code"] == status
        assert error["status"].isupper()
    else:
        assert set(error) == {"message", "type", "param", "code"}
    return str(error["message"])


SURFACES = ("openai", "gemini", "anthropic")


async def test_wrong_expired_and_disabled_tokens_are_refused_in_each_shape(
    tmp_path: Path,
) -> None:
    async with FakeUpstream() as fake:
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake.openai_base,
                              tokens=TOKENS)  # fmt: skip
        disabled = secret_in(await ainvoke("clients", "create", "gone", "--config", str(config)))
        await ainvoke("clients", "disable", "gone", "--config", str(config))
        wrong = new_secret()  # a real token's shape and checksum, but no client's
        assert well_formed(wrong)
        async with start_gateway(load_settings(config)) as running:
            for surface in SURFACES:
                for token in (wrong, disabled, EXPIRED):
                    reply = await post_as(running.url, surface, token)
                    message = shaped(reply, surface, 401)
                    assert token not in reply.text
                    assert token[-12:] not in reply.text
                    if token == EXPIRED:
                        assert "expired" in message
            assert sum(fake.calls_by_key().values()) == 0


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_not_believed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeUpstream() as fake:
        url = f"sqlite:///{tmp_path / 'gw.db'}"
        config = write_config(tmp_path, url, fake.openai_base, tokens=TOKENS)
        async with start_gateway(load_settings(config)) as running:
            for surface in SURFACES:
                forged = await post_as(
                    running.url, surface, OFFICE, **{"x-forwarded-for": "10.1.2.3"}
                )
                message = shaped(forged, surface, 403)
                assert "network address" in message
                assert OFFICE not in forged.text
            assert sum(fake.calls_by_key().values()) == 0

        trusted = write_config(
            tmp_path,
            url,
            fake.openai_base,
            tokens=TOKENS,
            gateway={"trusted_proxies": ["127.0.0.0/8"]},
            extra={"logging": {"access": True}},
        )
        caplog.set_level(logging.INFO, logger="llmgateway.request")
        async with start_gateway(load_settings(trusted)) as running:
            believed = await post_as(
                running.url, "openai", OFFICE, **{"x-forwarded-for": "10.1.2.3"}
            )
            assert believed.status_code == 200
            lines = [r for r in caplog.records if r.getMessage() == "request done"]
            assert lines[-1].client == "10.1.2.3"  # type: ignore[attr-defined]
            # the right-most hop the trusted proxy did not add is the client: a client
            # writing an office address further left gains nothing
            hops = "10.1.2.3, 203.0.113.9"
            spoofed = await post_as(running.url, "openai", OFFICE, **{"x-forwarded-for": hops})
            shaped(spoofed, "openai", 403)
            junk = await post_as(
                running.url, "openai", OFFICE, **{"x-forwarded-for": "10.1.2.3, x"}
            )
            shaped(junk, "openai", 403)  # a hop that is no address ends at the proxy itself
