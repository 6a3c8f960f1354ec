"""The console's keys page over a real loopback socket, on SQLite and PostgreSQL: the table and
its filters from the URL, keyset pages by the links the page gives, malformed parameters shown
as a message (never a 500), the row actions changing the store and the audit log, and the
import's folder check kept a while. Requests carry `Authorization: Bearer <admin.token>`
(sessions and CSRF are tested with the login)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from importlib.resources import files
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from tests.helpers import ManualClock

from llmgateway.config.settings import Settings
from llmgateway.console.app import Console, console_app
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.observe.metrics_http import listening
from llmgateway.store import Store, audit
from llmgateway.store.tables import key_status, keys

TOKEN = "console-keys-admin-token-0123456789abcdef"
OPENAI = [f"sk-console-{i:03d}-secretpart{i:03d}" for i in range(30)]
GEMINI = [f"AIza-console-{i:03d}-secretgem{i:03d}" for i in range(4)]
ALL = OPENAI + GEMINI


def settings(tmp: Path) -> Settings:
    def provider(name: str, models: tuple[str, ...], shared: bool) -> dict[str, object]:
        return {
            "provider_type": "openai_like",
            "keys_path": str(tmp / name),
            "api_base_url": "https://api.example.com/v1",
            "default_model": models[0],
            "shared_key_status": shared,
            "models": {m: {"endpoint_suffix": "/chat/completions"} for m in models},
            "access_control": {"gateway_access_token": f"console-token-{name}-01"},
        }

    return Settings.model_validate(
        {
            "providers": {
                "openai": provider("openai", ("gpt-a", "gpt-b"), False),
                "gemini": provider("gemini", ("g1",), True),
            },
            "admin": {"token": TOKEN},
        }
    )


@dataclass
class Site:
    url: str
    store: Store
    session: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, str]:
        async with self.session.get(self.url + path, headers=headers) as answer:
            return answer.status, await answer.text()

    async def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, str]:
        async with self.session.post(
            self.url + path, data=data, headers=headers, allow_redirects=False
        ) as answer:
            return answer.status, await answer.text()


@pytest.fixture
async def site(store: Store, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Site]:
    for name, values in (("openai", OPENAI), ("gemini", GEMINI)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keys.txt").write_text("\n".join(values) + "\n")
    config = settings(tmp_path)
    await run_sync(config, store)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status)
            .where(key_status.c.key_id % 3 == 0)
            .values(status="invalid_key", status_code=401, error_message=f"401 for {OPENAI[2]}")
        )
    root = web.Application()
    root.add_subapp("/admin", console_app(Console.create(config, store, clock=clock)))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        listening(root, "127.0.0.1", 0) as url,
        aiohttp.ClientSession(headers=headers) as session,
    ):
        yield Site(url + "/admin", store, session)


def prints(html: str) -> list[str]:
    """The fingerprints of the rows shown, in order."""
    return re.findall(r"<small><code>([0-9a-f]{12})</code></small>", html)


def link(html: str, label: str) -> str:
    found = re.search(r'<a href="/admin(/keys\?[^"]*)"[^>]*>' + re.escape(label), html)
    assert found is not None, label
    return unescape(found.group(1))


def assert_no_secret(html: str) -> None:
    for key in ALL:
        assert key not in html
        assert key[:-4] not in html


async def test_the_page_filters_and_pages_by_the_links_it_gives(site: Site) -> None:
    status, html = await site.get("/keys?size=25")
    assert status == 200
    assert "64 matching rows" in html
    first = prints(html)
    assert len(first) == 25
    status, second = await site.get(link(html, "Next →"))
    assert status == 200
    rest = prints(second)
    status, third = await site.get(link(second, "Next →"))
    rest += prints(third)
    assert (len(prints(second)), len(prints(third))) == (25, 14)
    assert "Next →" not in third
    assert len(first) + len(rest) == 64
    back = prints((await site.get(link(second, "← Previous")))[1])
    assert back == first
    _, gemini = await site.get("/keys?provider=gemini&model=shared")
    assert sorted(prints(gemini)) == sorted(fingerprint(k) for k in GEMINI)
    _, invalid = await site.get("/keys?state=invalid_key&code=401&size=200")
    async with site.store.engine.connect() as conn:
        want = (
            await conn.execute(sa.select(sa.func.count()).where(key_status.c.status_code == 401))
        ).scalar()
    assert len(prints(invalid)) == want
    _, found = await site.get(f"/keys?q={mask(OPENAI[7])}")
    assert set(prints(found)) == {fingerprint(OPENAI[7])}
    _, by_print = await site.get(f"/keys?q={fingerprint(OPENAI[8])[:6]}")
    assert set(prints(by_print)) == {fingerprint(OPENAI[8])}
    for shown in (html, second, third, gemini, invalid, found):
        assert_no_secret(shown)
    assert mask(OPENAI[2]) in invalid  # the error, with its key masked


async def test_the_bulk_form_submits_the_filter_as_a_job(site: Site) -> None:
    _, html = await site.get("/keys?state=invalid_key&provider=openai")
    bulk = html[html.index('action="/admin/jobs"') :].split("</form>")[0]
    assert 'name="state" value="invalid_key"' in bulk
    assert 'name="provider" value="openai"' in bulk
    assert 'name="all"' not in bulk  # the filter narrows: no need to say "every key"
    _, everything = await site.get("/keys")
    every = everything[everything.index('action="/admin/jobs"') :].split("</form>")[0]
    assert '<input type="hidden" name="all" value="1">' in every
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', bulk))
    fields.pop("csrf")
    status, progress = await site.post("/jobs", {**fields, "action": "disable"})
    assert status == 201
    assert_no_secret(progress)


async def test_last_used_is_shown(site: Site) -> None:
    async with site.store.engine.begin() as conn:
        await conn.execute(
            sa.update(keys).where(keys.c.value == GEMINI[1]).values(last_used_at=1.0)
        )

    def last_used(html: str) -> str:
        found = re.search(r"<td>([^<]*)</td>\s*<td><small>[^<]*keys\.txt:", html)
        assert found is not None
        return found.group(1)

    _, used = await site.get(f"/keys?q={fingerprint(GEMINI[1])}")
    _, unused = await site.get(f"/keys?q={fingerprint(GEMINI[2])}")
    assert last_used(used).endswith(" ago")
    assert last_used(unused) == "—"


async def test_sorting_reverses_by_the_heading_link(site: Site) -> None:
    _, html = await site.get("/keys?sort=key&size=200")
    _, down = await site.get(link(html, "Added"))
    assert prints(down) == list(reversed(prints(html)))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=nonsense", "a state is one of"),
        ("code=abc", "status code is a number"),
        ("size=100000", "a page has 25 to 200 rows"),
        ("sort=value", "sort must be one of"),
        ("q=sk-console-007", "search for a fingerprint"),
        ("provider=nobody", "no such provider"),
        ("model=gpt-z", "no such model"),
        ("after=garbage%00", "page link is damaged"),
        ("after=" + "A" * 5000, "page link is damaged"),
    ],
)
async def test_bad_parameters_are_a_message_not_an_error(
    site: Site, query: str, message: str
) -> None:
    status, html = await site.get(f"/keys?{query}")
    assert status == 400
    assert message in unescape(html)
    assert prints(html) == []
    status, fragment = await site.get(f"/keys?{query}", **{"HX-Request": "true"})
    assert status == 200
    assert message in unescape(fragment)
    assert "<html" not in fragment


async def test_row_actions_change_the_store_and_are_audited(site: Site) -> None:
    key = OPENAI[4]
    async with site.store.engine.connect() as conn:
        key_id = (await conn.execute(sa.select(keys.c.id).where(keys.c.value == key))).scalar()
    status, row = await site.post(
        f"/keys/{key_id}/disable", {"model": "gpt-a"}, **{"HX-Request": "true"}
    )
    assert status == 200
    assert "disabled" in row
    assert fingerprint(key) in row
    assert_no_secret(row)
    async with site.store.engine.connect() as conn:
        disabled = await conn.scalar(sa.select(keys.c.disabled_at).where(keys.c.id == key_id))
    assert disabled is not None
    status, _ = await site.post(f"/keys/{key_id}/enable", {"back": "?state=invalid_key"})
    assert status == 303
    status, _ = await site.post(f"/keys/{key_id}/reset", {})
    assert status == 303
    async with site.store.engine.connect() as conn:
        disabled = await conn.scalar(sa.select(keys.c.disabled_at).where(keys.c.id == key_id))
    assert disabled is None
    entries = await audit.recent(site.store)
    assert [e.action for e in entries][-3:] == ["disable", "enable", "reset"] or [
        e.action for e in entries
    ][:3] == ["reset", "enable", "disable"]
    assert all(key not in e.detail for e in entries)
    assert (await site.post("/keys/999999/disable", {}))[0] == 404
    assert (await site.post(f"/keys/{key_id}/explode", {}))[0] == 404
    assert (await site.post("/keys/abc/disable", {}))[0] == 404


async def test_export_streams_the_matching_keys_and_is_audited(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    status, text = await site.post("/keys/export", {"provider": "gemini", "format": "txt"})
    assert status == 200
    assert text.splitlines() == GEMINI
    status, table = await site.post(
        "/keys/export", {"state": "invalid_key", "provider": "openai", "format": "csv"}
    )
    lines = table.splitlines()
    assert lines[0] == "provider,fingerprint,status,source,key"
    async with site.store.engine.connect() as conn:
        invalid = {
            value
            for (value,) in await conn.execute(
                sa.select(keys.c.value)
                .join(key_status, key_status.c.key_id == keys.c.id)
                .where(key_status.c.status == "invalid_key", keys.c.value.like("sk-%"))
            )
        }
    assert {line.rsplit(",", 1)[1] for line in lines[1:]} == invalid
    assert all(line.startswith("openai,") for line in lines[1:])
    assert (await site.post("/keys/export", {"state": "bogus"}))[0] == 400
    entries = [e for e in await audit.recent(site.store) if e.action == "export"]
    assert sorted(e.keys for e in entries) == sorted([len(GEMINI), len(invalid)])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "exported 4 keys" in logged
    assert all(key not in logged for key in ALL)


async def test_import_writes_a_new_file_and_syncs(site: Site, tmp_path: Path) -> None:
    new = ["AIza-imported-000-abcdefgh01", "AIza-imported-001-abcdefgh02"]
    pasted = "\n".join([*new, GEMINI[0]])
    status, _ = await site.post("/keys/import", {"provider": "gemini", "keys": pasted})
    assert status == 303
    files = sorted((tmp_path / "gemini").glob("imported-*.txt"))
    assert len(files) == 1
    assert [ln for ln in files[0].read_text().splitlines() if not ln.startswith("#")] == new
    _, html = await site.get("/keys?provider=gemini")
    assert set(prints(html)) == {fingerprint(k) for k in [*GEMINI, *new]}
    entries = [e for e in await audit.recent(site.store) if e.action == "import"]
    assert [(e.detail, e.keys) for e in entries] == [("gemini", 2)]
    assert (await site.post("/keys/import", {"provider": "nobody", "keys": "x"}))[0] == 400
    too_big = {"provider": "gemini", "keys": "A" * (2 << 20)}
    assert (await site.post("/keys/import", too_big))[0] == 413


async def test_import_into_a_secret_mount_is_shown_disabled(site: Site, tmp_path: Path) -> None:
    (tmp_path / "gemini" / "..data").symlink_to(tmp_path / "gemini")
    _, html = await site.get("/keys")
    assert "Import to gemini is not possible" in html
    assert "gemini (read-only)" in html
    status, text = await site.post(
        "/keys/import", {"provider": "gemini", "keys": "AIza-x-" + "1" * 20}
    )
    assert status == 409
    assert "Kubernetes" in text
    assert not list((tmp_path / "gemini").glob("imported-*"))


async def test_the_folder_check_is_kept_30_seconds(
    site: Site, tmp_path: Path, clock: ManualClock
) -> None:
    _, html = await site.get("/keys")
    assert "(read-only)" not in html
    (tmp_path / "gemini" / "..data").symlink_to(tmp_path / "gemini")  # now a secret mount
    clock.advance(29)
    _, html = await site.get("/keys")
    assert "(read-only)" not in html  # the answer found 29 s ago: no probe of the folder
    clock.advance(2)
    _, html = await site.get("/keys")
    assert "gemini (read-only)" in html
    assert "openai (read-only)" not in html


async def test_a_refused_import_is_shown_at_once(site: Site, tmp_path: Path) -> None:
    _, html = await site.get("/keys")
    assert "(read-only)" not in html
    (tmp_path / "gemini" / "..data").symlink_to(tmp_path / "gemini")
    status, _ = await site.post(
        "/keys/import", {"provider": "gemini", "keys": "AIza-y-" + "2" * 20}
    )
    assert status == 409
    _, html = await site.get("/keys")
    assert "gemini (read-only)" in html


async def test_the_pager_is_named_apart_and_the_error_cell_has_a_class(site: Site) -> None:
    _, html = await site.get("/keys?size=25")
    labels = re.findall(r'<nav[^>]*aria-label="([^"]+)"', html)
    assert sorted(labels) == ["Pages", "Pages of keys"]
    assert html.count('<td class="key-error"><small>') == 25
    css = (files("llmgateway.console") / "static" / "console.css").read_text()
    assert "table.keys td.key-error small" in css
    assert "nth-child" not in css  # the columns may move: no rule counts them
