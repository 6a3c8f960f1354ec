"""Attacks on the console's clients page over a real socket, on SQLite and PostgreSQL: every
action refused without its session's CSRF token; a client's secret in no page, fragment,
header, log line or audit row but the one answer that made it; oversized and hostile fields
refused with a message (413, 411, 400: never a 500), markup in them escaped; and every action
on a client the config declares refused, nothing changed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from llmgateway.store import Store, audit
from llmgateway.store import clients as stored
from tests.console_clients_rig import (
    BEARER,
    act,
    clients_rig,
    page,
    refused_create,
    secret_of,
)
from tests.console_rig import Answer, ConsoleRig
from tests.helpers import ManualClock

ACTIONS = ("update", "disable", "enable", "rotate", "delete")


@pytest.fixture
async def rig(tmp_path: Path, store: Store, clock: ManualClock) -> AsyncIterator[ConsoleRig]:
    async with clients_rig(tmp_path, store, clock) as served:
        yield served


async def nothing_done(rig: ConsoleRig, names: set[str]) -> None:
    clients = await stored.all_clients(rig.console.store.engine)
    assert {c.name for c in clients} == names
    assert all(c.enabled for c in clients)
    assert await audit.recent(rig.console.store) == []


async def test_every_action_needs_the_sessions_csrf_token(rig: ConsoleRig) -> None:
    await stored.create(rig.console.store.engine, _columns("held"), rig.clock.now)
    cookie = await rig.login()
    other = await rig.csrf(await rig.login())
    paths = ["/clients", *(f"/clients/held/{action}" for action in ACTIONS)]
    for path in paths:
        data = {"name": "sneaky", "confirm": "held", "grace": "1h", "rpm": "1"}
        for sent in ({}, {"csrf": ""}, {"csrf": other}, {"csrf": "x" * 43}):
            refused = await rig.post(path, cookie=cookie, data={**data, **sent})
            assert refused.status == 403, path
            assert "CSRF" in refused.text
        header = await rig.post(path, cookie=cookie, headers={"X-CSRF-Token": other}, data=data)
        assert header.status == 403
    await nothing_done(rig, {"held"})
    mine = await rig.csrf(cookie)
    made = await rig.post("/clients", cookie=cookie, data={"csrf": mine, "name": "fine"})
    assert made.status == 201
    [entry] = await audit.recent(rig.console.store)
    assert entry.session == cookie.split(".")[1]


def _columns(name: str) -> dict[str, object]:
    from llmgateway.client_edits import new_client
    from llmgateway.store.clients import RULE_DEFAULTS

    return new_client(name, dict(RULE_DEFAULTS))[1]


async def test_a_secret_is_in_the_answer_that_made_it_only(
    rig: ConsoleRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)

    async def post(path: str, **data: str) -> Answer:
        return await rig.post(path, cookie=cookie, data={"csrf": csrf, **data})

    made = await post("/clients", name="team-s", notes="n", rpm="3")
    rotated = await post("/clients/team-s/rotate", grace="2h")
    secrets = [secret_of(made), secret_of(rotated)]
    assert secrets[0] not in rotated.text
    answers = [
        await post("/clients/team-s/update", rpm="4", routes="*"),
        await post("/clients/team-s/update", expires="nonsense"),
        await post("/clients/team-s/disable"),
        await post("/clients/team-s/enable"),
        await post("/clients/team-s/rotate", grace="bad"),
        await post("/clients/team-s/delete", confirm="no"),
        await post("/clients", name="team-s"),  # taken: the form again
    ]
    typed_in = await post("/clients/team-s/update", notes=f"old: {secrets[0]}")
    assert "notes: no client token here" in typed_in.text
    answers += [typed_in, await post("/clients", name="bad name", notes=secrets[0])]
    for path in ("/", "/clients", "/clients/team-s", "/clients/team-s/delete",
                 "/clients?done=updated&name=team-s", "/keys", "/jobs"):  # fmt: skip
        answers.append(await rig.get(path, cookie=cookie))
        answers.append(await rig.get(path, cookie=cookie, headers={"HX-Request": "true"}))
    answers.append(await page(rig, "/clients"))
    assert all(a.status < 500 for a in answers)
    rows = await audit.recent(rig.console.store, 100)
    assert [r.action for r in rows] == [
        "client enable",
        "client disable",
        "client update",
        "client rotate",
        "client create",
    ]
    logged = caplog.text
    for secret in secrets:
        hidden = secret[:-4]  # all but the last four, which the page shows
        for answer in answers:
            assert hidden not in answer.text
            assert all(hidden not in value for value in answer.headers.values())
        assert all(hidden not in f"{r.action} {r.detail} {r.user_agent}" for r in rows)
        assert hidden not in logged
    assert made.headers["Cache-Control"] == "no-store"  # the secret's page is never cached


@pytest.mark.parametrize("length", [20_000, 2 * 1024 * 1024])
async def test_an_oversized_body_is_refused(rig: ConsoleRig, length: int) -> None:
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)
    body = {"csrf": csrf, "name": "big", "notes": "n" * length}
    assert (await rig.post("/clients", cookie=cookie, data=body)).status == 413
    assert (await act(rig, "/clients", name="big", notes="n" * length)).status == 413
    await nothing_done(rig, set())


async def test_a_body_without_a_length_is_refused(rig: ConsoleRig) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"name=chunked"

    async with rig.http.post(f"{rig.base}/clients", data=chunks(), headers=BEARER) as answer:
        assert answer.status == 411
    await nothing_done(rig, set())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "ok", "notes": "n" * 501}, "notes: at most 500 characters"),
        ({"name": "ok", "routes": "r," * 600}, "routes: at most 1000 characters"),
        ({"name": "ok", "routes": ",".join(f"r{i}" for i in range(65))}, "at most 64 entries"),
        ({"name": "ok", "rpm": "9" * 13}, "rpm: at most 12 characters"),
        ({"name": "ok", "rpm": "0x10"}, "rpm: a whole number"),
        ({"name": "ok", "tpm": "١٢"}, "tpm: a whole number"),  # Arabic-Indic digits
        ({"name": "ok", "notes": "a\x00b"}, "notes: one line of printable text"),
        ({"name": "ok", "expires": "9" * 40}, "expires:"),
        ({"name": "ok\u202e"}, "name: 1 to 64 letters"),
        ({"name": "../etc"}, "name: 1 to 64 letters"),
        ({"name": "<script>"}, "name: 1 to 64 letters"),
    ],
)
async def test_a_hostile_field_is_refused_with_a_message(
    rig: ConsoleRig, fields: dict[str, str], message: str
) -> None:
    await refused_create(rig, fields, message)


async def test_markup_in_a_field_is_shown_escaped(rig: ConsoleRig) -> None:
    made = await act(rig, "/clients", name="x1", notes='<script>alert(1)</script>"><img src=x>')
    assert made.status == 201
    for path in ("/clients", "/clients/x1"):
        shown = (await page(rig, path)).text
        assert "<script>alert" not in shown
        assert "<img src=x>" not in shown
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown


async def test_a_file_field_is_refused(rig: ConsoleRig) -> None:
    form = aiohttp.FormData()
    form.add_field("name", "filed")
    form.add_field("notes", b"bytes", filename="notes.txt")
    refused = await rig.post("/clients", headers=BEARER, data=form)
    assert refused.status == 400
    assert "notes: not a text field" in refused.text
    await nothing_done(rig, set())


@pytest.mark.parametrize(
    "path",
    ["/clients/..%2Fkeys/disable", "/clients/a%00b/disable", "/clients/held/explode",
     "/clients/" + "a" * 65 + "/disable", "/clients/nobody/disable"],
)  # fmt: skip
async def test_a_bad_client_path_is_not_found(rig: ConsoleRig, path: str) -> None:
    await stored.create(rig.console.store.engine, _columns("held"), rig.clock.now)
    answer = await act(rig, path)
    assert answer.status == 404
    await nothing_done(rig, {"held"})


async def test_every_action_on_a_config_client_is_refused(rig: ConsoleRig) -> None:
    listed = await page(rig, "/clients")
    row = listed.text[listed.text.index('id="client-ci-bot"') :].split("</tr>")[0]
    assert "config" in row
    assert "read-only" in row
    assert "<form" not in row
    shown = await page(rig, "/clients/ci-bot")
    assert shown.status == 200
    assert "llmgateway reload" in shown.text
    assert 'action="/admin/clients/ci-bot/' not in shown.text
    assert (await page(rig, "/clients/ci-bot/delete")).status == 409
    for action in ACTIONS:
        refused = await act(rig, f"/clients/ci-bot/{action}", rpm="1", grace="1h", confirm="ci-bot")
        assert refused.status == 409, action
        assert "declared in the config file" in refused.text
        assert "llmgateway reload" in refused.text
    await nothing_done(rig, set())
