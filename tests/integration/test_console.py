"""The web console served with the Keeper, over real sockets, on SQLite and PostgreSQL: at
/admin on the Keeper's metrics listener (whose /healthz and /metrics stay as they were), or on a
listener of its own; the proxies page (URLs masked) and the breakers page with its reset, which
every gateway sees in the store and the audit log records."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.console_rig import ADMIN_TOKEN, console_rig, console_settings
from tests.helpers import METRICS_TOKEN, ManualClock, free_port

from llmgateway.config.settings import AdminSettings, MetricsSettings, Settings, WorkerSettings
from llmgateway.console.listener import keeper_http
from llmgateway.observe.metrics import Metrics
from llmgateway.store import Store, audit
from llmgateway.store.proxy_checks import ProxyResult, claim_due_proxies, write_proxy_results

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEYS = ["sk-console-integration-0000000000001", "sk-console-integration-0000000000002"]


def keeper_settings(tmp_path: Path, admin: dict[str, Any], **metrics: Any) -> Settings:
    settings = console_settings(tmp_path)
    return settings.model_copy(
        update={
            "admin": AdminSettings(token=ADMIN_TOKEN, **admin),
            "worker": WorkerSettings(metrics_port=free_port()),
            "metrics": MetricsSettings(access_token=METRICS_TOKEN, **metrics),
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **options: Any
) -> tuple[int, str]:
    async with http.request(method, url, allow_redirects=False, **options) as answer:
        return answer.status, await answer.text()


async def browse(http: aiohttp.ClientSession, console: str) -> None:
    """Log in through the form as a browser does and see every page."""
    status, _ = await fetch(http, "GET", console)
    assert status == 303  # to the login form
    status, _ = await fetch(http, "POST", console + "login", data={"token": ADMIN_TOKEN})
    assert status == 303
    for page in ("", "proxies", "breakers"):
        status, text = await fetch(http, "GET", console + page)
        assert status == 200, page
        assert "Log out" in text


async def test_the_console_shares_the_keepers_listener(
    tmp_path: Path,
    store: Store,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = keeper_settings(tmp_path, {})
    await store.sync_providers(settings.providers)
    await store.sync_keys("openai", KEYS, ["gpt-4o-mini"], shared=False)
    async with keeper_http(settings, Metrics.create(), store) as console:
        port = settings.worker.metrics_port
        assert console == f"http://127.0.0.1:{port}/admin/"
        base = f"http://127.0.0.1:{port}"
        assert await fetch(http, "GET", base + "/healthz") == (200, '{"status": "ok"}')
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        status, metrics = await fetch(http, "GET", base + "/metrics", headers=auth)
        assert status == 200
        assert "llmgateway_keys" in metrics
        assert (await fetch(http, "GET", base + "/metrics"))[0] == 401
        await browse(http, console)
        for page in ("", "proxies", "breakers"):
            status, text = await fetch(http, "GET", console + page, headers=BEARER)
            assert status == 200
            assert not any(key in text for key in KEYS)
    assert f"the console is at {console}" in caplog.text
    assert ADMIN_TOKEN not in caplog.text


async def test_the_console_on_a_listener_of_its_own(
    tmp_path: Path, store: Store, http: aiohttp.ClientSession
) -> None:
    settings = keeper_settings(tmp_path, {"port": 0})
    async with keeper_http(settings, Metrics.create(), store) as console:
        assert console is not None
        found = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/admin/", console)
        assert found
        assert int(found.group(1)) != settings.worker.metrics_port
        await browse(http, console)
        root = console.removesuffix("admin/")
        status, _ = await fetch(http, "GET", root)
        assert status == 302  # / leads to the console
        keeper = f"http://127.0.0.1:{settings.worker.metrics_port}"
        assert (await fetch(http, "GET", keeper + "/admin/", headers=BEARER))[0] == 404
        assert (await fetch(http, "GET", keeper + "/healthz"))[0] == 200


@pytest.mark.parametrize("serve_metrics", [True, False])
async def test_without_metrics_the_listener_still_serves_the_console(
    tmp_path: Path, store: Store, http: aiohttp.ClientSession, serve_metrics: bool
) -> None:
    # metrics off in the config, or `serve` (whose gateway has the /metrics)
    settings = keeper_settings(tmp_path, {}, enabled=serve_metrics)
    async with keeper_http(settings, Metrics.create(), store, serve_metrics=False) as console:
        assert console is not None
        base = console.removesuffix("/admin/")
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert (await fetch(http, "GET", base + "/metrics", headers=auth))[0] == 404
        assert (await fetch(http, "GET", base + "/healthz"))[0] == 200
        assert (await fetch(http, "GET", console, headers=BEARER))[0] == 200


async def test_without_a_token_there_is_no_console(
    tmp_path: Path, store: Store, http: aiohttp.ClientSession
) -> None:
    settings = keeper_settings(tmp_path, {}).model_copy(update={"admin": AdminSettings()})
    async with keeper_http(settings, Metrics.create(), store) as console:
        assert console is None
        base = f"http://127.0.0.1:{settings.worker.metrics_port}"
        assert (await fetch(http, "GET", base + "/admin/", headers=BEARER))[0] == 404
        assert (await fetch(http, "GET", base + "/healthz"))[0] == 200


async def test_the_proxies_page_masks_every_proxy_credential(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    settings = console_settings(tmp_path)
    await store.sync_providers(settings.providers)
    alive = "http://alice:pa55-secret-alive@10.0.0.1:3128"
    dead = "socks5://bob:pa55-secret-dead@10.0.0.2:1080"
    untested = "http://10.0.0.3:8080"
    await store.sync_proxies("openai", [alive, dead, untested])
    claimed = {p.url: p for p in await claim_due_proxies(store, clock(), clock() + 60, 10)}
    now = clock()
    await write_proxy_results(
        store,
        [
            ProxyResult(claimed[alive].proxy_id, True, now, now + 300),
            ProxyResult(claimed[dead].proxy_id, False, now, now + 60, f"cannot connect to {dead}"),
        ],
    )
    clock.advance(120)
    async with console_rig(settings, store, clock) as rig:
        page = await rig.get("/proxies", headers=BEARER)
    assert page.status == 200
    assert "pa55-secret" not in page.text
    assert "alice" not in page.text
    assert "bob:" not in page.text
    assert "http://***@10.0.0.1:3128" in page.text
    assert "socks5://***@10.0.0.2:1080" in page.text
    assert "cannot connect to socks5://***@10.0.0.2:1080" in page.text
    assert untested in page.text
    rows = re.findall(r'<span class="state state-(\w+)">', page.text)
    assert sorted(rows) == ["alive", "dead", "untested"]
    assert "1 alive, 1 dead" in page.text
    assert "2 min ago" in page.text  # last check and failing since


async def test_a_breaker_reset_from_the_console_reaches_the_store_and_the_audit_log(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    settings = console_settings(tmp_path)
    await store.save_breakers({"openai": (2, 1), "gemini": (0, 0)})
    async with console_rig(settings, store, clock) as rig:
        cookie = await rig.login()
        page = await rig.get("/breakers", cookie=cookie)
        assert re.search(r"<td>openai</td>\s*<td><span class=\"state state-open\">", page.text)
        csrf = await rig.csrf(cookie)
        clock.advance(5)
        answer = await rig.post(
            "/breakers/openai/reset",
            cookie=cookie,
            headers={"X-CSRF-Token": csrf, "HX-Request": "true", "User-Agent": "test-browser"},
        )
        assert answer.status == 200
        assert "Reset of openai&#39;s breakers requested" in answer.text
        assert '<div id="breakers">' in answer.text  # the fragment, not the page
        assert "<html" not in answer.text
        unknown = await rig.post("/breakers/nope/reset", headers=BEARER)
        assert unknown.status == 404
    rows = {row.provider: row for row in await store.breakers()}
    assert rows["openai"].reset_at == clock()
    assert rows["gemini"].reset_at is None
    (entry,) = await audit.recent(store)
    assert (entry.action, entry.detail, entry.keys) == ("breaker reset", "openai", 0)
    assert entry.session == cookie.split(".")[1]
    assert (entry.address, entry.user_agent) == ("127.0.0.1", "test-browser")
