"""Client tokens end to end: clients made with `llmgateway clients`, and one the config
declares, used through the openai SDK against the real gateway and a fake upstream; a
revocation reaching a running gateway (within a second on PostgreSQL, the command run as a
process of its own); rotation with a grace; the client's limits (429 with its own
`x-ratelimit-*` headers); and 1,000 streams cancelled at random points leaving no slot held."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmgateway.config.load import load_settings
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.clients_rig import CONFIG_TOKEN, ainvoke, secret_in, write_config
from tests.helpers import Running, eventually, start_gateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def sdk(url: str, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


async def answers(url: str, token: str) -> int:
    """The status of one chat completion on route `fast` with `token`."""
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": "fast", "messages": CHAT},
        )
    return reply.status_code


async def test_a_client_token_resolves_routes_through_the_sdk(db_url: str, tmp_path: Path) -> None:
    async with FakeUpstream() as fake:
        config = str(write_config(tmp_path, db_url, fake.openai_base))
        secret = secret_in(await ainvoke("clients", "create", "team-a", "--config", config,
                                         "--routes", "fast"))  # fmt: skip
        async with start_gateway(load_settings(Path(config))) as running:
            client = sdk(running.url, secret)
            raw = await client.chat.completions.with_raw_response.create(
                model="fast", messages=CHAT
            )
            assert raw.headers["x-llmgateway-route"] == "fast"
            assert raw.parse().choices[0].message.content
            listed = await client.models.list()
            assert [m.id for m in listed.data] == ["fast"]
            with pytest.raises(openai.NotFoundError):  # no providers granted
                await client.chat.completions.create(model="alpha/gpt-a", messages=CHAT)
            declared = sdk(running.url, CONFIG_TOKEN)  # the config holds its SHA-256 only
            assert (await declared.chat.completions.create(model="fast", messages=CHAT)).choices

            await ainvoke("clients", "disable", "team-a", "--config", config)
            await eventually(lambda: _refused(running.url, secret), within=5)
            with pytest.raises(openai.AuthenticationError) as refused:
                await client.chat.completions.create(model="fast", messages=CHAT)
            assert secret not in str(refused.value.body)
            assert secret not in refused.value.response.text

            await ainvoke("clients", "enable", "team-a", "--config", config)
            await eventually(lambda: _accepted(running.url, secret), within=5)
            fresh = secret_in(
                await ainvoke("clients", "rotate", "team-a", "--config", config, "--grace", "1h")
            )
            await eventually(lambda: _accepted(running.url, fresh), within=5)
            assert await answers(running.url, secret) == 200  # within its grace
            await ainvoke("clients", "rotate", "team-a", "--config", config)  # no grace
            await eventually(lambda: _refused(running.url, fresh), within=5)


async def _refused(url: str, token: str) -> bool:
    return await answers(url, token) == 401


async def _accepted(url: str, token: str) -> bool:
    return await answers(url, token) == 200


async def test_a_revocation_reaches_a_running_gateway_within_a_second_on_postgresql(
    pg_database: str, tmp_path: Path
) -> None:
    async with FakeUpstream() as fake:
        # the interval refresh is far off: only the store's notice can be this quick
        config = str(write_config(tmp_path, pg_database, fake.openai_base, refresh_sec=60))
        secret = secret_in(await ainvoke("clients", "create", "team-b", "--config", config))
        async with start_gateway(load_settings(Path(config))) as running:
            await asyncio.wait_for(running.app.state.listener.listening.wait(), 10)
            assert await answers(running.url, secret) == 200
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmgateway", "clients", "disable", "team-b",
                "--config", config, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await command.communicate()
            assert command.returncode == 0
            assert b"disabled" in out
            took = await eventually(lambda: _refused(running.url, secret), within=1.0, step=0.02)
            assert took < 1.0


def limited_config(tmp_path: Path, base: str, **limits: int) -> Path:
    token = {"name": "limited", "token": "gw-limited-client-token-4b8e1f0a93c2", **limits}
    return write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", base, tokens=[token])


LIMITED = "gw-limited-client-token-4b8e1f0a93c2"


async def test_a_client_over_its_rpm_gets_429_with_its_own_headers(tmp_path: Path) -> None:
    async with FakeUpstream() as fake:
        settings = load_settings(limited_config(tmp_path, fake.openai_base, rpm=2))
        async with start_gateway(settings) as running, httpx.AsyncClient() as http:
            assert [await answers(running.url, LIMITED) for _ in range(2)] == [200, 200]
            reply = await http.post(
                f"{running.url}/v1/chat/completions",
                headers={"authorization": f"Bearer {LIMITED}"},
                json={"model": "fast", "messages": CHAT},
            )
            assert reply.status_code == 429
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(reply.headers["retry-after"]) <= 60
            assert reply.headers["x-ratelimit-limit-requests"] == "2"
            assert reply.headers["x-ratelimit-remaining-requests"] == "0"
            assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
            with pytest.raises(openai.RateLimitError):
                await sdk(running.url, LIMITED).chat.completions.create(model="fast", messages=CHAT)
            assert sum(fake.calls_by_key().values()) == 2  # the refused ones never reached it


async def test_a_client_at_max_parallel_gets_429_until_a_slot_frees(tmp_path: Path) -> None:
    async with FakeUpstream(chunks=5, chunk_delay=0.2) as fake:
        settings = load_settings(limited_config(tmp_path, fake.openai_base, max_parallel=1))
        async with start_gateway(settings) as running, httpx.AsyncClient() as http:
            body = {"model": "fast", "messages": CHAT, "stream": True}
            auth = {"authorization": f"Bearer {LIMITED}"}
            url = f"{running.url}/v1/chat/completions"
            async with http.stream("POST", url, headers=auth, json=body) as first:
                assert first.status_code == 200
                second = await http.post(url, headers=auth, json=body)
                assert second.status_code == 429
                assert "in flight" in second.json()["error"]["message"]
                assert second.headers["retry-after"] == "1"
                await first.aread()
            await eventually(lambda: running.gateway.clients.inflight("limited") == 0)
            assert (await http.post(url, headers=auth, json=body)).status_code == 200


async def test_cancelled_streams_leave_no_slot_held(tmp_path: Path) -> None:
    async with FakeUpstream(chunks=8, chunk_delay=0.005) as fake:
        settings = load_settings(limited_config(tmp_path, fake.openai_base, max_parallel=5000))
        async with start_gateway(settings) as running:
            seen = await _cancel_streams(running, 1000, random.Random(7))
            assert seen["peak"] > 1  # the streams did overlap
            assert seen["before"] + seen["mid"] + seen["whole"] == 1000
            assert seen["mid"] >= 200, seen  # cancelled mid-stream
            assert seen["before"] >= 50, seen  # cancelled before the answer came
            await eventually(lambda: running.gateway.clients.inflight("limited") == 0, within=10)
            assert await answers(running.url, LIMITED) == 200
            assert running.gateway.clients.inflight("limited") == 0


async def _cancel_streams(running: Running, total: int, rng: random.Random) -> dict[str, int]:
    """`total` streamed requests, 100 at a time: a third cancelled after a random wait of at
    most 10 ms (most before their answer), a third cancelled after a random number of
    events, the rest read whole; how many ended before their answer, mid-stream and whole,
    and the most held at once (`peak`)."""
    clients = running.gateway.clients
    body = {"model": "fast", "messages": CHAT, "stream": True}
    auth = {"authorization": f"Bearer {LIMITED}"}
    url = f"{running.url}/v1/chat/completions"
    seen = {"before": 0, "mid": 0, "whole": 0, "peak": 0}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def one(events: int | None) -> None:
            stage = "before"
            try:
                async with http.stream("POST", url, headers=auth, json=body) as reply:
                    stage = "mid"
                    seen["peak"] = max(seen["peak"], clients.inflight("limited") or 0)
                    async for _ in reply.aiter_lines():
                        if events is not None and (events := events - 1) < 0:
                            task = asyncio.current_task()
                            assert task is not None
                            task.cancel()
                            await asyncio.sleep(0)  # the cancellation lands here
                stage = "whole"
            finally:
                seen[stage] += 1

        for _ in range(total // 100):
            tasks, timers = [], []
            for _ in range(100):
                kind = rng.randrange(3)
                task = asyncio.create_task(one(rng.randrange(8) if kind == 1 else None))
                tasks.append(task)
                if kind == 0:
                    timers.append(loop.call_later(rng.random() * 0.01, task.cancel))
            await asyncio.gather(*tasks, return_exceptions=True)
            for timer in timers:
                timer.cancel()
    return seen


async def test_a_stored_clients_limits_hold_across_gateways_on_redis(
    tmp_path: Path, redis_prefix: str
) -> None:
    from tests.helpers import REDIS_URL

    limits = {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": redis_prefix}
    async with FakeUpstream(chunks=5, chunk_delay=0.2) as fake:
        url = f"sqlite:///{tmp_path / 'gw.db'}"
        config = write_config(tmp_path, url, fake.openai_base, extra={"limits": limits})
        secret = secret_in(await ainvoke("clients", "create", "solo", "--config", str(config),
                                         "--max-parallel", "1", "--rpm", "3"))  # fmt: skip
        settings = load_settings(config)
        body = {"model": "fast", "messages": CHAT, "stream": True}
        auth = {"authorization": f"Bearer {secret}"}
        async with (
            start_gateway(settings) as one,
            start_gateway(settings) as two,
            httpx.AsyncClient() as http,
        ):
            assert one.gateway.clients.backend is not None
            async with http.stream(
                "POST", f"{one.url}/v1/chat/completions", headers=auth, json=body
            ) as first:
                assert first.status_code == 200
                other = await http.post(f"{two.url}/v1/chat/completions", headers=auth, json=body)
                assert other.status_code == 429  # the slot is held on the other gateway
                assert "in flight" in other.json()["error"]["message"]
                await first.aread()
            await eventually(lambda: _status(http, two.url, auth, body, 200), within=5)
            # three requests a minute between both gateways: the fourth is refused
            third = await http.post(f"{one.url}/v1/chat/completions", headers=auth, json=body)
            assert third.status_code == 200
            fourth = await http.post(f"{two.url}/v1/chat/completions", headers=auth, json=body)
            assert fourth.status_code == 429
            assert fourth.headers["x-ratelimit-limit-requests"] == "3"
            assert fourth.headers["x-ratelimit-remaining-requests"] == "0"


async def _status(
    http: httpx.AsyncClient, url: str, auth: dict[str, str], body: dict[str, object], want: int
) -> bool:
    reply = await http.post(f"{url}/v1/chat/completions", headers=auth, json=body)
    return reply.status_code == want


async def test_a_stored_clients_limit_is_shared_by_the_fleet_on_postgresql(
    pg_database: str, tmp_path: Path
) -> None:
    async with FakeUpstream(chunks=5, chunk_delay=0.2) as fake:
        config = write_config(tmp_path, pg_database, fake.openai_base,
                              extra={"limits": {"backend": "postgres"}})  # fmt: skip
        secret = secret_in(await ainvoke("clients", "create", "pair", "--config", str(config),
                                         "--max-parallel", "2"))  # fmt: skip
        settings = load_settings(config)
        body = {"model": "fast", "messages": CHAT, "stream": True}
        auth = {"authorization": f"Bearer {secret}"}
        async with (
            start_gateway(settings) as one,
            start_gateway(settings) as two,
            httpx.AsyncClient() as http,
        ):
            backends = [one.gateway.clients.backend, two.gateway.clients.backend]
            await eventually(lambda: all(getattr(b, "size", 0) == 2 for b in backends), 15)
            chat = "/v1/chat/completions"
            async with http.stream("POST", f"{one.url}{chat}", headers=auth, json=body) as held:
                assert held.status_code == 200
                # each gateway counts its share: one of the two slots
                again = await http.post(f"{one.url}{chat}", headers=auth, json=body)
                assert again.status_code == 429
                elsewhere = await http.post(f"{two.url}{chat}", headers=auth, json=body)
                assert elsewhere.status_code == 200
                await held.aread()
