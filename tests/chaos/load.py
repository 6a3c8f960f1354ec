"""A load of concurrent official-SDK clients (openai AsyncOpenAI, google-genai; streaming and
not) on a gateway, whose every result is recorded with its time, so each chaos scenario can say
exactly when errors may occur; and what must be left over once the load stopped (nothing).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import openai
from google import genai
from google.genai import types

from llmgateway.conductor.app import Conductor
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True, slots=True)
class Result:
    """One client call: when it ended (monotonic), what it was, and its error (None: fine)."""

    at: float
    kind: str
    error: str | None
    status: int | None


@dataclass(slots=True)
class Load:
    """`clients` concurrent SDK callers cycling through the kinds until `stop()`."""

    url: str
    clients: int = 12
    kinds: tuple[str, ...] = ("openai", "openai-stream", "gemini", "gemini-stream")
    results: list[Result] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(index), name=f"load-{index}")
            for index in range(self.clients)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def errors(self, since: float = 0.0, until: float = float("inf")) -> list[Result]:
        return [r for r in self.results if r.error is not None and since <= r.at <= until]

    def ok(self, since: float = 0.0, until: float = float("inf")) -> list[Result]:
        return [r for r in self.results if r.error is None and since <= r.at <= until]

    async def _client(self, index: int) -> None:
        oa = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=OPENAI_TOKEN, max_retries=0, timeout=15
        )
        options = types.HttpOptions(
            base_url=self.url, retry_options=types.HttpRetryOptions(attempts=1), timeout=15_000
        )
        gm = genai.Client(api_key=GEMINI_TOKEN, http_options=options)
        turn = index
        try:
            while not self._stop.is_set():
                kind = self.kinds[turn % len(self.kinds)]
                turn += 1
                error, status = await _one(kind, oa, gm)
                self.results.append(Result(time.monotonic(), kind, error, status))
        finally:
            await oa.close()
            await gm.aio.aclose()


async def _one(
    kind: str, oa: openai.AsyncOpenAI, gm: genai.Client
) -> tuple[str | None, int | None]:
    try:
        if kind == "openai":
            reply = await oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert reply.choices[0].message.content
        elif kind == "openai-stream":
            stream = await oa.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text
        elif kind == "gemini":
            answer = await gm.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
            assert answer.text
        else:
            chunks = await gm.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hi"
            )
            assert "".join([c.text or "" async for c in chunks])
    except openai.APIStatusError as error:
        return f"{type(error).__name__}: {error.message[:120]}", error.status_code
    except Exception as error:  # every failure the client sees is a result to judge
        status = getattr(error, "code", None)
        return f"{type(error).__name__}: {str(error)[:120]}", status if isinstance(
            status, int
        ) else None
    return None, None


def leaks(gateway: Conductor, fake: FakeUpstream) -> dict[str, int]:
    """What must be zero once the load stopped: requests open at the fake, and gateway
    connections still checked out (idle keep-alive connections are pooled, not leaked)."""
    acquired = 0
    for session in gateway.upstream._sessions.values():
        connector = session.connector
        if connector is not None and not connector.closed:
            acquired += len(connector._acquired)
    inflight = sum(
        provider.pool.inflight(key_id)
        for provider in gateway.providers.values()
        for key_id in range(1, 200)
    )
    return {"fake_open": fake.open_requests, "acquired": acquired, "inflight": inflight}
