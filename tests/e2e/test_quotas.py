"""Token quotas end to end: clients made with `llmgateway clients create --quota`, used through
the openai SDK against the real gateway and the fake upstream (whose answers report their
usage: 8 tokens each), on SQLite and PostgreSQL.

A client gets answers until its quota is spent, then 429 `insufficient_quota` (OpenAI,
Gemini and Anthropic shapes) with `Retry-After` to the period's end; a gateway started later
refuses it at once (the spend is read from the store); the next period lets it through (the
gateway's clock moved a day on: no waiting); `clients show|list` print the spend. On two
gateways sharing a PostgreSQL store the total spent over the quota stays within the bound the
README states: (refresh interval + write interval) × the client's rate, plus the answers in
flight."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import httpx2 as httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from llmgateway.config.load import load_settings
from llmgateway.core.clients import Period
from llmgateway.core.quota import period_bounds
from llmgateway.records import USAGE_FLUSH_SEC
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.wire import PROMPT_TOKENS
from tests.clients_rig import ainvoke, secret_in, write_config
from tests.helpers import Running, eventually, start_gateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHUNKS = 3
PER_ANSWER = PROMPT_TOKENS + CHUNKS  # the fake's usage: prompt 5, one token a chunk


class Shifted:
    """The gateway's clock, `offset` seconds ahead of the real one."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def shift_clock(running: Running) -> Shifted:
    """Put a `Shifted` clock where the quotas read the time: the client gate, the token
    write-behind's hours, and the refresh's reads."""
    clock = Shifted()
    running.gateway.clock = clock
    running.gateway.clients.clock = clock
    assert running.gateway.tokens is not None
    running.gateway.tokens.clock = clock
    return clock


def sdk(url: str, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


async def ask(client: openai.AsyncOpenAI) -> int | openai.RateLimitError:
    """One chat completion on route `fast`: 200, or the 429 raised."""
    try:
        await client.chat.completions.create(model="fast", messages=CHAT)
    except openai.RateLimitError as refused:
        return refused
    return 200


async def test_a_client_gets_answers_until_its_quota_is_spent(db_url: str, tmp_path: Path) -> None:
    quota = 30  # 4 answers of 8 tokens: the fourth goes over, the fifth is refused
    async with FakeUpstream(chunks=CHUNKS) as fake:
        config = str(write_config(tmp_path, db_url, fake.openai_base))
        created = await ainvoke("clients", "create", "metered", "--config", config,
                                "--quota", str(quota), "--period", "day")  # fmt: skip
        secret = secret_in(created)
        settings = load_settings(Path(config))
        assert not settings.gateway.token_accounting  # the quota turns the counting on
        async with start_gateway(settings) as running:
            assert running.app.state.edge.attempt_loop.tokens is not None
            client = sdk(running.url, secret)
            got = [await ask(client) for _ in range(4)]
            assert got == [200] * math.ceil(quota / PER_ANSWER)
            refused = await ask(client)
            assert isinstance(refused, openai.RateLimitError)
            assert refused.code == "insufficient_quota"
            day_ends = period_bounds(Period.DAY, time.time())[1]
            assert abs(int(refused.response.headers["retry-after"]) - (day_ends - time.time())) < 3
            assert refused.response.headers["x-llmgateway-quota-limit-tokens"] == str(quota)
            assert refused.response.headers["x-llmgateway-quota-remaining-tokens"] == "0"
            assert "x-ratelimit-limit-tokens" not in refused.response.headers
            assert (
                sum(fake.calls_by_key().values()) == 4
            )  # the refused one never reached the upstream
            async with httpx.AsyncClient() as http:  # the Gemini and Anthropic shapes
                native = await http.post(
                    f"{running.url}/v1beta/models/fast:generateContent",
                    headers={"x-goog-api-key": secret},
                    json={"contents": [{"parts": [{"text": "hi"}]}]},
                )
                claude = await http.post(
                    f"{running.url}/v1/messages",
                    headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
                    json={"model": "fast", "max_tokens": 8, "messages": CHAT},
                )
            assert native.status_code == 429
            assert native.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
            assert "retry-after" in native.headers
            assert claude.status_code == 429
            assert claude.json()["error"]["type"] == "rate_limit_error"
            await eventually(lambda: running.gateway.tokens.pending == 0, within=10)  # type: ignore[union-attr]

        shown = json.loads(
            await ainvoke("clients", "show", "metered", "--config", config, "--json")
        )
        assert (shown["quota"], shown["period"], shown["spent"]) == (quota, "day", 4 * PER_ANSWER)
        listed = await ainvoke("clients", "list", "--config", config)
        assert f"quota={4 * PER_ANSWER}/{quota}/day" in listed

        async with start_gateway(settings) as later:  # the spend is the store's
            assert isinstance(await ask(sdk(later.url, secret)), openai.RateLimitError)
            clock = shift_clock(later)
            clock.offset = 86_400.0  # tomorrow: a new day, a new quota
            assert await ask(sdk(later.url, secret)) == 200
            await later.gateway.refresh()  # tomorrow's read finds only that answer
            spend = later.gateway.clients.quotas.spend("metered", clock())
            assert spend is not None
            assert spend.spent == PER_ANSWER
        assert sum(fake.calls_by_key().values()) == 5


async def _spend_until_refused(
    client: openai.AsyncOpenAI, answered: list[float], pause: float
) -> None:
    """Ask until refused, `pause` s between answers; the time of each answer in `answered`."""
    while True:
        got = await ask(client)
        if got != 200:
            assert isinstance(got, openai.RateLimitError)
            assert got.code == "insufficient_quota"
            return
        answered.append(time.monotonic())
        await asyncio.sleep(pause)


async def test_the_overshoot_across_two_gateways_on_postgresql_is_bounded(
    pg_database: str, tmp_path: Path
) -> None:
    refresh = 0.3
    per_loop, loops = 0.02, 4  # two loops on each gateway, ~100 answers a second in all
    quota = 6000  # seconds of that rate: twice the bound, so unshared spends would break it
    async with FakeUpstream(chunks=CHUNKS) as fake:
        config = write_config(tmp_path, pg_database, fake.openai_base, refresh_sec=refresh)
        created = await ainvoke("clients", "create", "shared", "--config", str(config),
                                "--quota", str(quota), "--period", "month")  # fmt: skip
        secret = secret_in(created)
        settings = load_settings(config)
        answered: list[float] = []
        async with start_gateway(settings) as one, start_gateway(settings) as two:
            clients = [sdk(gw.url, secret) for gw in (one, two) for _ in range(loops // 2)]
            work = [_spend_until_refused(c, answered, per_loop) for c in clients]
            await asyncio.wait_for(asyncio.gather(*work), timeout=60)
    spent = len(answered) * PER_ANSWER
    assert spent >= quota
    elapsed = answered[-1] - answered[0]
    rate = spent / elapsed  # tokens a second, both gateways together
    bound = (refresh + USAGE_FLUSH_SEC) * rate + loops * PER_ANSWER  # + the answers in flight
    over = spent - quota
    print(f"quota {quota}, spent {spent}, over {over}, rate {rate:.0f}/s, bound {bound:.0f}")
    assert over <= bound
    assert sum(fake.calls_by_key().values()) == len(answered)
