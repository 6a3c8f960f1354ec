"""Token accounting end to end: the real gateway over HTTP, the official SDKs as clients, the
fake upstream reporting usage, and the counts in a real SQLite file or PostgreSQL database.

1,000 mixed requests (OpenAI chat whole and streamed, with and without the client's own
`include_usage` under `stream_usage: inject`, the Responses API whole and streamed, embeddings,
Gemini native whole and streamed, Anthropic whole and streamed, and a gateway token's route) add
up to exactly the usage the fake upstream reported, cached and reasoning tokens included (some
requests name a `prompt_cache_key` or a reasoning effort); `llmgateway usage` prints the sums
from the same store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from google import genai
from google.genai import types
from openai.types import CompletionUsage

from llmgateway.config.settings import Settings
from llmgateway.providers.usage import Tokens
from llmgateway.store import Store
from llmgateway.store.token_usage import totals
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.wire import PROMPT_TOKENS
from tests.anthropic_rig import MODEL as CLAUDE_MODEL
from tests.anthropic_rig import async_client as claude_client
from tests.anthropic_rig import claude_settings
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, run_cli, start_gateway

CI_TOKEN = "gw-ci-bot-token-usage-000000001"
CHUNKS = 4
REQUESTS = 1000
KINDS = (
    "chat",
    "chat_stream",
    "chat_stream_usage",
    "responses",
    "responses_stream",
    "embeddings",
    "gemini",
    "gemini_stream",
    "claude",
    "claude_stream",
    "route_stream",
)


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"chunks": CHUNKS}


def usage_settings(tmp_path: Path, fake: FakeUpstream, db_url: str) -> Settings:
    """The suite's three providers (openai with `stream_usage: inject`), the database at
    `db_url`, and a gateway token `ci-bot` whose route `fast` goes to openai."""
    top = {
        "routes": {"fast": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        "database": {"url": db_url},
    }
    base = claude_settings(tmp_path, fake, top=top)
    document = base.model_dump(mode="json", exclude_unset=True)
    document["gateway"]["tokens"] = [{"name": "ci-bot", "token": CI_TOKEN, "routes": ["*"]}]
    document["gateway"]["token_accounting"] = True
    document["providers"]["openai"]["gateway_policy"]["stream_usage"] = "inject"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    return Settings.model_validate(document)


class Clients:
    """The SDK clients on the gateway, and the tokens each kind of request should add up to."""

    def __init__(self, url: str) -> None:
        self.openai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
        self.ci = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CI_TOKEN, max_retries=0)
        options = types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=1))
        self.gemini = genai.Client(api_key=GEMINI_TOKEN, http_options=options)
        self.claude = claude_client(url)
        self.usage_chunks = 0  # usage chunks the clients that did not ask for one received
        self.asked = 0  # requests that could name a prompt cache key or a reasoning effort

    def spend(self) -> tuple[str | None, bool]:
        """A prompt cache key for every other such request, a reasoning effort every third."""
        self.asked += 1
        return ("cache-1" if self.asked % 2 else None), self.asked % 3 == 0

    async def send(self, kind: str) -> Tokens:
        """One request; the tokens the fake reported for it, read from what the client saw
        where the client sees usage."""
        messages: Any = [{"role": "user", "content": "hi"}]
        if kind.startswith("responses"):
            return await self.respond(kind == "responses_stream")
        if kind == "chat":
            reply = await self.openai.chat.completions.create(
                model="gpt-4o", messages=messages, **self.chat_options()
            )
            assert reply.usage is not None
            return chat_tokens(reply.usage)
        if kind in ("chat_stream", "route_stream"):
            client = self.ci if kind == "route_stream" else self.openai
            model = "fast" if kind == "route_stream" else "gpt-4o-mini"
            stream = await client.chat.completions.create(
                model=model, messages=messages, stream=True
            )
            words = 0
            async for chunk in stream:
                self.usage_chunks += chunk.usage is not None or not chunk.choices
                words += bool(chunk.choices and chunk.choices[0].delta.content)
            return Tokens(PROMPT_TOKENS, words)
        if kind == "chat_stream_usage":
            stream = await self.openai.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **self.chat_options(),
            )
            found = [chunk.usage async for chunk in stream if chunk.usage is not None]
            assert len(found) == 1
            return chat_tokens(found[0])
        if kind == "embeddings":
            vectors = await self.openai.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
            return Tokens(vectors.usage.prompt_tokens, 0)
        if kind == "gemini":
            answer = await self.gemini.aio.models.generate_content(
                model="gemini-2.5-flash", contents="hi"
            )
            meta = answer.usage_metadata
            assert meta is not None
            return Tokens(meta.prompt_token_count or 0, meta.candidates_token_count or 0)
        if kind == "gemini_stream":
            last: Any = None
            async for part in await self.gemini.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hi"
            ):
                last = part.usage_metadata or last
            return Tokens(last.prompt_token_count, last.candidates_token_count)
        if kind == "claude":
            message = await self.claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=64, messages=messages
            )
            return Tokens(message.usage.input_tokens, message.usage.output_tokens)
        assert kind == "claude_stream"
        async with self.claude.messages.stream(
            model=CLAUDE_MODEL, max_tokens=64, messages=messages
        ) as events:
            final = await events.get_final_message()
        return Tokens(final.usage.input_tokens, final.usage.output_tokens)

    def chat_options(self) -> dict[str, Any]:
        cache_key, reasons = self.spend()
        options: dict[str, Any] = {"reasoning_effort": "low"} if reasons else {}
        return options | ({"prompt_cache_key": cache_key} if cache_key else {})

    async def respond(self, stream: bool) -> Tokens:
        """A Responses API request, whole or streamed (its usage in `response.completed`)."""
        cache_key, reasons = self.spend()
        options: dict[str, Any] = {"reasoning": {"effort": "low"}} if reasons else {}
        options |= {"prompt_cache_key": cache_key} if cache_key else {}
        if not stream:
            answer = await self.openai.responses.create(model="gpt-4o", input="hi", **options)
            assert answer.output_text
            usage = answer.usage
        else:
            events = await self.openai.responses.create(
                model="gpt-4o-mini", input="hi", stream=True, **options
            )
            done = [e.response async for e in events if e.type == "response.completed"]
            assert len(done) == 1
            usage = done[0].usage
        assert usage is not None
        return Tokens(
            usage.input_tokens,
            usage.output_tokens,
            usage.input_tokens_details.cached_tokens,
            usage.output_tokens_details.reasoning_tokens,
        )


def chat_tokens(usage: CompletionUsage) -> Tokens:
    """The tokens a chat completion's usage shows its client."""
    cached = usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens
    reasoning = usage.completion_tokens_details and usage.completion_tokens_details.reasoning_tokens
    return Tokens(usage.prompt_tokens, usage.completion_tokens, cached or 0, reasoning or 0)


async def test_usage_adds_up_over_mixed_requests(
    tmp_path: Path, fake: FakeUpstream, db_url: str, db_kind: str
) -> None:
    settings = usage_settings(tmp_path, fake, db_url)
    kinds = [KINDS[i % len(KINDS)] for i in range(REQUESTS)]
    random.Random(5).shuffle(kinds)
    expected: Counter[str] = Counter()
    per_client: Counter[str] = Counter()
    async with start_gateway(settings) as running:
        clients = Clients(running.url)
        queue = list(kinds)

        async def worker() -> None:
            while queue:
                kind = queue.pop()
                got = await clients.send(kind)
                expected.update(
                    input=got.input, output=got.output, cached=got.cached, reasoning=got.reasoning
                )
                per_client["ci-bot" if kind == "route_stream" else "-"] += got.input + got.output

        await asyncio.gather(*(worker() for _ in range(16)))
        assert clients.usage_chunks == 0  # inject never shows a client a chunk it did not ask for
    # the gateway drained its counts at its stop
    assert min(expected["output"], expected["cached"], expected["reasoning"]) > 0
    store = await Store.open(db_url)
    try:
        by_client = {t.name: t for t in await totals(store, 0.0, "client")}
        by_route = {t.name: t for t in await totals(store, 0.0, "route")}
        by_provider = {t.name: t for t in await totals(store, 0.0, "provider")}
        by_key = await totals(store, 0.0, "key")
    finally:
        await store.close()
    assert sum(t.requests for t in by_client.values()) == REQUESTS
    assert sum(t.missing for t in by_client.values()) == 0
    assert sum(t.input for t in by_client.values()) == expected["input"]
    assert sum(t.output for t in by_client.values()) == expected["output"]
    assert sum(t.cached for t in by_client.values()) == expected["cached"]
    assert sum(t.reasoning for t in by_client.values()) == expected["reasoning"]
    assert {name: t.input + t.output for name, t in by_client.items()} == dict(per_client)
    assert set(by_route) == {"fast", "-"}
    assert by_route["fast"].requests == kinds.count("route_stream")
    assert set(by_provider) == {"openai", "gemini", "claude"}
    assert all("sk-good" not in t.name and t.name.count("…") == 1 for t in by_key)

    config = str(tmp_path / "config.yaml")
    code, out, err = await run_cli("usage", "--config", config, "--by", "provider", "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["provider"] for row in rows} == {"openai", "gemini", "claude"}
    assert sum(int(row["input"]) for row in rows) == expected["input"]
    assert sum(int(row["cached"]) for row in rows) == expected["cached"]
    assert sum(int(row["reasoning"]) for row in rows) == expected["reasoning"]
    code, out, err = await run_cli("usage", "--config", config, "--by", "key", "--json")
    assert code == 0, err
    assert sum(entry["output"] for entry in json.loads(out)) == expected["output"]
    assert "sk-good-openai-000000000001" not in out
    code, out, err = await run_cli("usage", "--config", config, "--since", "2h")
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["CLIENT", "REQUESTS"]
    assert "ci-bot" in out
    assert out.splitlines()[-1].startswith("total")
    code, out, err = await run_cli("usage", "--config", config, "--since", "soon")
    assert code == 2
    assert "12h, 7d or 2w" in err
    code, out, err = await run_cli("clients", "usage", "ci-bot", "--config", config, "--json")
    assert code == 0, err
    assert [(t["name"], t["input"] + t["output"]) for t in json.loads(out)] == [
        ("ci-bot", per_client["ci-bot"])
    ]
    code, out, err = await run_cli(
        "clients", "usage", "ci-bot", "--config", config, "--by", "route", "--csv"
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["route"], int(row["requests"])) for row in rows] == [
        ("fast", kinds.count("route_stream"))
    ]
    code, out, err = await run_cli("clients", "usage", "--config", config, "--by", "provider")
    assert code == 2  # the whole pool's providers are `llmgateway usage`'s
