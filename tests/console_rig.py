"""The web console behind a real loopback socket, for its security and integration tests.

`console_rig(settings, store, clock)` serves `console_app` (a `Console` on `store` whose clock is
the test's `ManualClock`) on a listener of its own and hands back a `ConsoleRig`, whose requests
carry exactly the cookie and headers a test gives (no cookie jar: a test forges, replays and
drops cookies at will). Every answer is checked: the admin token is never in it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from llmgateway.config.settings import AdminSettings, Settings
from llmgateway.console.app import Console, console_app
from llmgateway.console.listener import own_listener
from llmgateway.console.session import COOKIE_NAME
from llmgateway.observe.metrics import Metrics
from llmgateway.observe.metrics_http import listening
from llmgateway.store import Store
from tests.helpers import ManualClock, gateway_settings

ADMIN_TOKEN = "console-admin-token-5d1f0a9e7c3b2a41"
"""The admin token of the rig's console."""


def console_settings(tmp_path: Path, token: str = ADMIN_TOKEN) -> Settings:
    """Two providers (on an upstream nobody calls) and the console on with `token`."""
    settings = gateway_settings(tmp_path, "http://127.0.0.1:9")
    return settings.model_copy(update={"admin": AdminSettings(token=token, port=0)})


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: status, headers, body text, and the session cookie it set (None: none;
    "" when it deleted it)."""

    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def cookie(self) -> str | None:
        for header in self.headers.getall("Set-Cookie", ()):
            name, _, rest = header.partition("=")
            if name == COOKIE_NAME:
                return rest.partition(";")[0].strip('"')
        return None


@dataclass(frozen=True, slots=True)
class ConsoleRig:
    """A served console: `base` is its URL (`http://127.0.0.1:PORT/admin`)."""

    base: str
    console: Console
    clock: ManualClock
    metrics: Metrics
    http: aiohttp.ClientSession

    async def request(
        self,
        method: str,
        path: str,
        *,
        cookie: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Answer:
        """`method` on `path` (below /admin) with `cookie` as the session cookie."""
        sent = dict(headers or {})
        if cookie is not None:
            sent["Cookie"] = f"{COOKIE_NAME}={cookie}"
        async with self.http.request(
            method, self.base + path, headers=sent, data=data, allow_redirects=False
        ) as response:
            answer = Answer(response.status, response.headers, await response.text())
        token = self.console.settings.admin.token
        assert token not in answer.text, f"{method} {path}: the admin token is in the body"
        assert all(token not in value for value in answer.headers.values()), "token in a header"
        return answer

    async def get(self, path: str, **options: Any) -> Answer:
        return await self.request("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Answer:
        return await self.request("POST", path, **options)

    async def login(self, token: str = ADMIN_TOKEN) -> str:
        """Log in through the form; the session cookie it set."""
        answer = await self.post("/login", data={"token": token, "next": "/admin/"})
        assert answer.status == 303, answer.text
        assert answer.cookie, answer.headers
        return answer.cookie

    async def csrf(self, cookie: str) -> str:
        """The CSRF token a page of the session carries (its logout form's)."""
        page = await self.get("/", cookie=cookie)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def auth_failures(self, reason: str) -> float:
        """`llmgateway_auth_failures_total{surface="admin", reason}` so far."""
        value = self.metrics.registry.get_sample_value(
            "llmgateway_auth_failures_total", {"surface": "admin", "reason": reason}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def console_rig(
    settings: Settings, store: Store, clock: ManualClock
) -> AsyncIterator[ConsoleRig]:
    """The console of `settings` over `store` on a loopback port of its own."""
    metrics = Metrics.create()
    console = Console.create(settings, store, metrics, clock)
    async with (
        listening(own_listener(console_app(console)), "127.0.0.1", 0) as url,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        yield ConsoleRig(f"{url}/admin", console, clock, metrics, http)
