"""The console's bulk jobs over a real loopback socket, on SQLite and PostgreSQL: submit an
action on the keys a filter selects, poll its progress fragment until the Keeper's runner has
done it, cancel one, list the recent ones; refusals of bad fields, of a filter that narrows
nothing, and of a cookie request without its CSRF token; the keys page's bulk form (a refusal
in its region, a job on to its page). No page holds a secret."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from tests.helpers import ManualClock

from llmgateway.config.settings import Settings
from llmgateway.console.app import Console, console_app
from llmgateway.console.key_filter import FilterForm
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keeper.bulk_jobs import JobRunner
from llmgateway.key_filter import FilterError
from llmgateway.observe.metrics_http import listening
from llmgateway.records import KeyFilter
from llmgateway.store import Store, audit
from llmgateway.store.jobs import recent_jobs
from llmgateway.store.tables import key_status, keys

TOKEN = "console-jobs-admin-token-7f3a9c2e5b1d"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HTMX = {"HX-Request": "true"}


def settings() -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": "/nonexistent",
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": {m: {"endpoint_suffix": "/chat/completions"} for m in ("m1", "m2")},
        "access_control": {"gateway_access_token": "gw-token-openai-0001"},
    }
    return Settings.model_validate({"admin": {"token": TOKEN}, "providers": {"openai": provider}})


SECRETS = [f"sk-console-job-{i:04d}-abcdefghijklmnop" for i in range(12)]


@asynccontextmanager
async def served(store: Store, clock: ManualClock) -> AsyncIterator[str]:
    config = settings()
    await store.sync_providers(config.providers)
    await store.sync_keys("openai", SECRETS, ["m1", "m2"], False)
    root = web.Application()
    root.add_subapp("/admin", console_app(Console.create(config, store, clock=clock)))
    async with listening(root, "127.0.0.1", 0) as url:
        yield url


def job_id_in(page: str) -> int:
    found = re.search(r'id="job-(\d+)"', page)
    assert found is not None, page
    return int(found.group(1))


def assert_no_secret(page: str) -> None:
    assert all(secret not in page for secret in SECRETS)


async def test_submit_poll_and_finish_a_bulk_disable(store: Store, clock: ManualClock) -> None:
    async with served(store, clock) as url, aiohttp.ClientSession() as http:
        async with store.engine.begin() as conn:  # 5 keys found invalid
            await conn.execute(
                sa.update(key_status)
                .where(key_status.c.key_id <= 5)
                .values(status=KeyStatus.INVALID_KEY.value)
            )
        form = {"action": "disable", "provider": "openai", "state": "invalid_key"}
        async with http.post(f"{url}/admin/jobs", data=form, headers=BEARER | HTMX) as answer:
            page = await answer.text()
            assert answer.status == 201, page
        job_id = job_id_in(page)
        assert 'hx-trigger="every 1s"' in page
        assert "queued" in page
        assert "0 of 5 keys" in page

        assert await JobRunner(store, "keeper-test").run_pending(asyncio.Event()) == 1
        async with http.get(f"{url}/admin/jobs/{job_id}", headers=BEARER | HTMX) as answer:
            done = await answer.text()
            assert answer.status == 200
        assert "hx-trigger" not in done  # finished: the polling stops here
        assert ">done<" in done
        assert "5 of 5 keys (5 changed)" in done
        assert "by bearer" in done
        async with store.engine.connect() as conn:
            gone = await conn.scalar(
                sa.select(sa.func.count()).where(keys.c.disabled_at.is_not(None))
            )
        assert gone == 5

        async with http.get(f"{url}/admin/jobs/{job_id}", headers=BEARER) as answer:
            full = await answer.text()  # without htmx: the whole page
        assert "<h1>Job" in full
        async with http.get(f"{url}/admin/jobs", headers=BEARER) as answer:
            listed = await answer.text()
        assert f'href="/admin/jobs/{job_id}"' in listed
        logged = await audit.recent(store)
        assert [(e.action, e.keys, e.session) for e in logged] == [("disable", 5, "bearer")]
        assert_no_secret(page + done + full + listed)


async def test_cancel_stops_a_job(store: Store, clock: ManualClock) -> None:
    async with served(store, clock) as url, aiohttp.ClientSession() as http:
        form = {"action": "reset", "provider": "openai"}
        async with http.post(f"{url}/admin/jobs", data=form, headers=BEARER | HTMX) as answer:
            job_id = job_id_in(await answer.text())
        async with http.post(f"{url}/admin/jobs/{job_id}/cancel", headers=BEARER | HTMX) as answer:
            page = await answer.text()
            assert answer.status == 200
        assert "cancelled" in page
        assert "hx-trigger" not in page
        assert await JobRunner(store, "keeper-test").run_pending(asyncio.Event()) == 0
        actions = [e.action for e in await audit.recent(store)]
        assert actions == ["cancel", "reset"]


async def test_bad_requests_are_refused_and_nothing_is_submitted(
    store: Store, clock: ManualClock
) -> None:
    async with served(store, clock) as url, aiohttp.ClientSession() as http:
        bad = [
            {"action": "delete", "provider": "openai"},
            {"action": "disable", "state": "sleepy"},
            {"action": "disable", "code": "9999"},
            {"action": "disable", "q": SECRETS[0][3:15]},  # a piece of a secret: no search
            {"action": "disable"},  # narrows nothing and not all=1
        ]
        for form in bad:
            async with http.post(f"{url}/admin/jobs", data=form, headers=BEARER) as answer:
                page = await answer.text()
                assert answer.status == 400, (form, page)
                assert "Not submitted" in page
        assert await audit.recent(store) == []
        everything = {"action": "recheck", "all": "1"}
        async with http.post(f"{url}/admin/jobs", data=everything, headers=BEARER) as answer:
            assert answer.status == 201
        async with http.get(f"{url}/admin/jobs/999999", headers=BEARER) as answer:
            assert answer.status == 404


async def test_a_cookie_request_needs_its_csrf_token(store: Store, clock: ManualClock) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with served(store, clock) as url, aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(f"{url}/admin/login", data={"token": TOKEN}) as answer:
            assert answer.status in (200, 303), await answer.text()
        async with http.get(f"{url}/admin/jobs") as answer:
            page = await answer.text()
        token = re.search(r'"X-CSRF-Token": "([^"]+)"', page)
        assert token is not None, page
        form = {"action": "disable", "provider": "openai"}
        async with http.post(f"{url}/admin/jobs", data=form, headers=HTMX) as answer:
            assert answer.status == 403
        assert await audit.recent(store) == []
        csrf = {"X-CSRF-Token": token.group(1)}
        async with http.post(f"{url}/admin/jobs", data=form, headers=HTMX | csrf) as answer:
            assert answer.status == 201
        async with http.post(f"{url}/admin/jobs", data=form | {"csrf": token.group(1)}) as answer:
            assert answer.status == 200  # a plain form: redirected to the job's page
            assert answer.url.path.startswith("/admin/jobs/")
        sessions = {e.session for e in await audit.recent(store)}
        assert len(sessions) == 1
        assert sessions != {"bearer"}


def test_the_filter_form_reads_every_field() -> None:
    form = FilterForm.of({"provider": " openai ", "state": "disabled", "code": "429", "q": "a1b2"})
    assert form.key_filter() == KeyFilter(
        provider="openai", disabled=True, status_code=429, search="a1b2"
    )
    assert form.query(sort="state") == "provider=openai&state=disabled&code=429&q=a1b2&sort=state"
    assert FilterForm.of({"state": "no_quota"}).key_filter().statuses == {KeyStatus.NO_QUOTA}
    assert not FilterForm.of({"other": "x"}).narrows
    for given in ({"state": "sleepy"}, {"code": "42"}, {"q": "sk-console"}, {"model": "m" * 201}):
        try:
            FilterForm.of(given).key_filter()
        except FilterError:
            continue
        raise AssertionError(f"{given} was read")


async def test_the_keys_pages_bulk_form_shows_a_refusal_in_its_region(
    store: Store, clock: ManualClock
) -> None:
    async with served(store, clock) as url, aiohttp.ClientSession(headers=BEARER) as http:
        async with http.get(f"{url}/admin/keys") as answer:
            page = await answer.text()
        form = re.search(r'<form method="post" action="/admin/jobs"[^>]*>', page)
        assert form is not None, page
        assert 'hx-post="/admin/jobs"' in form.group(0)
        assert 'hx-target="#bulk-result"' in form.group(0)
        assert '<div id="bulk-result" data-swap-refusals></div>' in page
        region = HTMX | {"HX-Target": "bulk-result"}
        refused = {"action": "disable", "state": "sleepy"}
        async with http.post(f"{url}/admin/jobs", data=refused, headers=region) as answer:
            assert answer.status == 400
            text = await answer.text()
        assert text.strip().startswith('<p class="notice error" role="alert">Not submitted:')
        assert "<html" not in text  # a fragment, for the region
        submitted = {"action": "disable", "provider": "openai"}
        async with http.post(f"{url}/admin/jobs", data=submitted, headers=region) as answer:
            assert answer.status == 201
            [made] = await recent_jobs(store, 1)
            assert answer.headers["HX-Redirect"] == f"/admin/jobs/{made.id}"


async def test_a_plain_forms_refusal_is_a_page(store: Store, clock: ManualClock) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with served(store, clock) as url, aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(f"{url}/admin/login", data={"token": TOKEN}) as answer:
            assert answer.status in (200, 303)
        async with http.get(f"{url}/admin/keys") as answer:
            token = re.search(r'"X-CSRF-Token": "([^"]+)"', await answer.text())
        assert token is not None
        refused = {"action": "disable", "csrf": token.group(1)}  # no filter, not all=1
        async with http.post(f"{url}/admin/jobs", data=refused) as answer:
            assert answer.status == 400
            page = await answer.text()
        assert "<html" in page
        assert "Not submitted: no filter" in page
        assert 'href="/admin/keys"' in page
        assert await recent_jobs(store) == []
