"""Tokens per minute end to end: the real gateway over HTTP, the openai SDK as the client, the
fake upstream reporting its usage (5 prompt tokens plus one per chunk).

Each request below asks for `max_tokens=1000`, so it reserves about 1,020 tokens (the body's
bytes / 4 plus 1,000) while its answer's usage is 10: with a `tpm` of 4,500, four streams in
flight fit and the fifth does not, and once they are answered the reservations shrink to
their real 10 tokens. A client over its tpm gets 429 with its own `x-ratelimit-*-tokens`:
exact on one gateway (local counts) and on two (Redis), each gateway its share on PostgreSQL;
a key with `key_limits.tpm` is skipped for the next one before the upstream is asked."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from llmgateway.config.load import load_settings
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.clients_rig import ainvoke, secret_in, write_config
from tests.e2e.test_clients import LIMITED, _cancel_streams, limited_config
from tests.e2e.test_key_limits import KEYS, limited, two_gateways
from tests.helpers import OPENAI_TOKEN, REDIS_URL, eventually, start_gateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TPM = 4500
FIT = 4  # requests of ~1,020 reserved tokens in 4,500
STREAM: dict[str, Any] = {"chunks": 5, "chunk_delay": 0.3}  # each stream lasts 1.5 s


def sdk(url: str, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


async def opened(client: openai.AsyncOpenAI, model: str = "fast") -> Any:
    """A stream asking for up to 1,000 tokens, opened (its headers in) and not yet read; or
    the `RateLimitError` that refused it."""
    try:
        return await client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=1000, stream=True
        )
    except openai.RateLimitError as refused:
        return refused


@contextlib.asynccontextmanager
async def held(clients: list[openai.AsyncOpenAI]) -> AsyncIterator[list[Any]]:
    """One stream per client in `clients`, opened one after the other and all held open until
    the block ends (then read to their end)."""
    got = [await opened(client) for client in clients]
    try:
        yield got
    finally:
        for stream in got:
            if not isinstance(stream, openai.RateLimitError):
                async for _ in stream:
                    pass


def refusals(got: list[Any]) -> list[openai.RateLimitError]:
    return [item for item in got if isinstance(item, openai.RateLimitError)]


def assert_own_token_headers(refused: openai.RateLimitError, remaining_below: int) -> None:
    headers = refused.response.headers
    assert refused.body is not None
    assert refused.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) < remaining_below
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "x-ratelimit-limit-requests" not in headers  # the client has no rpm


async def test_a_client_over_its_tpm_gets_429_and_the_real_usage_frees_the_rest(
    tmp_path: Path,
) -> None:
    async with FakeUpstream(**STREAM) as fake:
        settings = load_settings(limited_config(tmp_path, fake.openai_base, tpm=TPM))
        async with start_gateway(settings) as running:
            client = sdk(running.url, LIMITED)
            async with held([client] * (FIT + 2)) as got:
                refused = refusals(got)
                assert len(refused) == 2  # exact: four reservations fit, the fifth does not
                assert_own_token_headers(refused[0], remaining_below=1100)
                assert sum(fake.calls_by_key().values()) == FIT
            # answered: each reservation is now its real 10 tokens, so the minute has room
            for _ in range(FIT + 2):
                answer = await client.chat.completions.create(
                    model="fast", messages=CHAT, max_tokens=1000
                )
                assert answer.usage is not None
                assert answer.usage.total_tokens == 5 + 5
            assert running.gateway.clients.tokens("limited") == (2 * FIT + 2) * 10


async def test_a_stored_clients_tpm_holds_across_two_gateways_on_redis(
    tmp_path: Path, redis_prefix: str
) -> None:
    limits = {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": redis_prefix}
    async with FakeUpstream(**STREAM) as fake:
        url = f"sqlite:///{tmp_path / 'gw.db'}"
        config = write_config(tmp_path, url, fake.openai_base, extra={"limits": limits})
        secret = secret_in(
            await ainvoke("clients", "create", "tokens", "--config", str(config), "--tpm", str(TPM))
        )
        settings = load_settings(config)
        async with start_gateway(settings) as one, start_gateway(settings) as two:
            clients = [sdk(one.url, secret), sdk(two.url, secret)] * 3
            async with held(clients) as got:
                refused = refusals(got)
                assert len(refused) == 2  # exact across both gateways
                assert_own_token_headers(refused[0], remaining_below=1100)
                assert sum(fake.calls_by_key().values()) == FIT
            # the reservations settle at the real usage: the fleet's minute has room again
            assert [await _answered(c) for c in clients] == [True] * 6


async def _answered(client: openai.AsyncOpenAI) -> bool:
    answer = await client.chat.completions.create(model="fast", messages=CHAT, max_tokens=1000)
    return bool(answer.choices)


async def test_a_stored_clients_tpm_is_shared_by_the_fleet_on_postgresql(
    pg_database: str, tmp_path: Path
) -> None:
    async with FakeUpstream(**STREAM) as fake:
        config = write_config(tmp_path, pg_database, fake.openai_base,
                              extra={"limits": {"backend": "postgres"}})  # fmt: skip
        secret = secret_in(
            await ainvoke("clients", "create", "shared", "--config", str(config), "--tpm", str(TPM))
        )
        settings = load_settings(config)
        async with start_gateway(settings) as one, start_gateway(settings) as two:
            backends = [one.gateway.clients.backend, two.gateway.clients.backend]
            await eventually(lambda: all(getattr(b, "size", 0) == 2 for b in backends), 15)
            # each gateway counts its share, 2,250: two reservations each, never over 4,500
            clients = [sdk(one.url, secret)] * 3 + [sdk(two.url, secret)] * 3
            async with held(clients) as got:
                assert [isinstance(g, openai.RateLimitError) for g in got] == [
                    False,
                    False,
                    True,
                ] * 2
                headers = refusals(got)[0].response.headers
                assert headers["x-ratelimit-limit-tokens"] == str(TPM)
                assert headers["x-ratelimit-remaining-tokens"] == "0"
                assert sum(fake.calls_by_key().values()) == FIT


async def test_a_keys_tpm_moves_the_pool_to_another_key_before_the_upstream_refuses(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    for key in KEYS:
        fake.set_behavior(key, Behavior(delay=1.0))
    settings = limited(tmp_path, fake, {"tpm": 1500}, backend="local")
    async with two_gateways(settings) as (urls, _):
        client = sdk(urls[0], OPENAI_TOKEN)

        async def ask() -> int:
            """200, or the Retry-After of a 429 (the refusal is the gateway's own)."""
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=CHAT, max_tokens=1000
                )
            except openai.RateLimitError as refused:
                return int(refused.response.headers["retry-after"])
            return 200

        statuses = sorted(await asyncio.gather(*(ask() for _ in range(3))))
        # one ~1,020-token reservation fits a key's 1,500: the second request went to the
        # other key, the third found both full and was refused here, never upstream
        assert statuses[1:] == [200, 200]
        assert 50 <= statuses[0] <= 60  # when the first reservation leaves the minute
        assert [fake.calls(key) for key in KEYS] == [1, 1]
        # answered with 8 tokens each, the keys have room again
        assert await asyncio.gather(*(ask() for _ in range(2))) == [200, 200]


async def test_cancelled_streams_leave_no_reservation_unsettled(tmp_path: Path) -> None:
    async with FakeUpstream(chunks=8, chunk_delay=0.005) as fake:
        config = limited_config(tmp_path, fake.openai_base, max_parallel=5000, tpm=10**9)
        async with start_gateway(load_settings(config)) as running:
            clients = running.gateway.clients
            seen = await _cancel_streams(running, 1000, random.Random(11))
            assert seen["mid"] >= 200, seen
            assert seen["before"] >= 50, seen
            await eventually(lambda: clients.inflight("limited") == 0, within=10)
            assert clients.unsettled() == 0
            spent = clients.tokens("limited")
            # streams read whole settled at their real 13 tokens; the others at 0 (no answer)
            # or at their reservation (cut mid-answer, no usage read)
            assert spent is not None
            assert spent >= 13 * seen["whole"]
