"""The console's clients page over a real loopback socket, on SQLite and PostgreSQL: each
action (create, update, disable, enable, rotate with a grace, delete after its confirmation)
as the store then holds it and as the audit log records it; the table as `clients list`
shows it, with the tokens of the last day and week; bad input shown on the page, nothing
stored; and a running gateway refusing a client disabled from the console."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.clients_rig import write_config
from tests.console_clients_rig import act, clients_rig, page, refused_create, secret_of
from tests.console_rig import ConsoleRig, console_rig
from tests.e2e.test_clients import answers
from tests.helpers import ManualClock, eventually, start_gateway

from llmgateway.config.load import load_settings
from llmgateway.config.settings import AdminSettings
from llmgateway.records import TokenCount
from llmgateway.store import Store, audit, token_usage
from llmgateway.store import clients as stored
from llmgateway.testing.fake_upstream import FakeUpstream

FULL = {
    "name": "team-a",
    "routes": "fast, slow",
    "providers": "",
    "models": "gpt-*",
    "rpm": "5",
    "tpm": "",
    "max_parallel": "2",
    "quota": "1000",
    "period": "week",
    "expires": "2030-01-01",
    "allow_ip": "10.0.0.0/8, 192.168.1.7",
    "notes": "the A team",
}


@pytest.fixture
async def rig(tmp_path: Path, store: Store, clock: ManualClock) -> AsyncIterator[ConsoleRig]:
    async with clients_rig(tmp_path, store, clock) as served:
        yield served


async def test_create_stores_the_client_and_shows_its_secret_once(rig: ConsoleRig) -> None:
    made = await act(rig, "/clients", **FULL)
    assert made.status == 201
    secret = secret_of(made)
    assert "shown this once" in made.text
    record = await stored.find(rig.console.store.engine, "team-a")
    assert record is not None
    assert record.token_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert (record.routes, record.models, record.providers) == (("fast", "slow"), ("gpt-*",), ())
    assert (record.rpm, record.tpm, record.max_parallel) == (5, None, 2)
    assert (record.quota_tokens, record.quota_period) == (1000, "week")
    assert record.expires_at == 1_893_456_000.0  # 2030-01-01T00:00:00Z
    assert record.allow_ips == ("10.0.0.0/8", "192.168.1.7")
    assert (record.notes, record.enabled) == ("the A team", True)
    [entry] = await audit.recent(rig.console.store)
    assert (entry.action, entry.detail, entry.session) == ("client create", "team-a", "bearer")
    listed = await page(rig, "/clients")
    assert listed.status == 200
    assert record.shown in listed.text
    assert secret not in listed.text
    for shown in ("team-a", "ci-bot", "fast, slow", "0 / 1000", "rpm 5", "parallel 2",
                  "10.0.0.0/8, 192.168.1.7", "2030-01-01T00:00:00Z", "the A team"):  # fmt: skip
        assert shown in listed.text, shown


async def test_a_blank_create_takes_the_clis_defaults(rig: ConsoleRig) -> None:
    assert (await act(rig, "/clients", name="plain")).status == 201
    record = await stored.find(rig.console.store.engine, "plain")
    assert record is not None
    assert (record.routes, record.rpm, record.quota_tokens, record.allow_ips) == (
        ("*",),
        None,
        None,
        (),
    )


async def test_update_changes_only_the_rules(rig: ConsoleRig) -> None:
    await act(rig, "/clients", **FULL)
    before = await stored.find(rig.console.store.engine, "team-a")
    shown = await page(rig, "/clients/team-a")
    assert 'name="rpm" value="5"' in shown.text  # the form holds the client's rules
    edit = {**FULL, "routes": "fast", "rpm": "", "quota": "0", "expires": "", "allow_ip": ""}
    edit.pop("name")
    done = await act(rig, "/clients/team-a/update", **edit)
    assert (done.status, done.headers["Location"]) == (303, "/admin/clients/team-a?done=updated")
    after = await stored.find(rig.console.store.engine, "team-a")
    assert before is not None
    assert after is not None
    assert (after.routes, after.rpm, after.quota_tokens, after.quota_period) == (
        ("fast",),
        None,
        None,
        None,
    )
    assert (after.expires_at, after.allow_ips, after.max_parallel) == (None, (), 2)
    assert after.token_sha256 == before.token_sha256
    entry = (await audit.recent(rig.console.store))[0]
    assert entry.action == "client update"
    assert entry.detail.startswith("team-a: ")
    assert "rpm" in entry.detail
    assert "Client team-a updated." in (await page(rig, "/clients/team-a?done=updated")).text


async def test_disable_and_enable(rig: ConsoleRig) -> None:
    await act(rig, "/clients", name="team-b")
    off = await act(rig, "/clients/team-b/disable")
    assert (off.status, off.headers["Location"]) == (
        303,
        "/admin/clients?done=disabled&name=team-b",
    )
    record = await stored.find(rig.console.store.engine, "team-b")
    assert record is not None
    assert not record.enabled
    listed = await page(rig, "/clients?done=disabled&name=team-b")
    assert "Client team-b disabled." in listed.text
    assert '<span class="state state-disabled">disabled</span>' in listed.text
    assert (await act(rig, "/clients/team-b/enable")).status == 303
    record = await stored.find(rig.console.store.engine, "team-b")
    assert record is not None
    assert record.enabled
    actions = [e.action for e in await audit.recent(rig.console.store)]
    assert actions == ["client enable", "client disable", "client create"]


async def test_rotate_keeps_the_old_token_for_the_grace(
    rig: ConsoleRig, clock: ManualClock
) -> None:
    old = secret_of(await act(rig, "/clients", name="team-c"))
    rotated = await act(rig, "/clients/team-c/rotate", grace="1h")
    assert rotated.status == 201
    new = secret_of(rotated)
    assert new != old
    record = await stored.find(rig.console.store.engine, "team-c")
    assert record is not None
    assert record.token_sha256 == hashlib.sha256(new.encode()).hexdigest()
    assert record.previous_sha256 == hashlib.sha256(old.encode()).hexdigest()
    assert record.previous_until == clock.now + 3600
    assert (await audit.recent(rig.console.store))[0].detail == "team-c (grace 1h)"
    await act(rig, "/clients/team-c/rotate")  # no grace: the old one is refused at once
    record = await stored.find(rig.console.store.engine, "team-c")
    assert record is not None
    assert record.previous_sha256 is None
    bad = await act(rig, "/clients/team-c/rotate", grace="soon")
    assert bad.status == 400
    assert "grace: &#39;soon&#39; is not a span" in bad.text


async def test_delete_needs_its_confirmation(rig: ConsoleRig) -> None:
    await act(rig, "/clients", name="team-d")
    asked = await page(rig, "/clients/team-d/delete")
    assert asked.status == 200
    assert 'name="confirm"' in asked.text
    for wrong in ({}, {"confirm": "team-x"}, {"confirm": "TEAM-D"}):
        refused = await act(rig, "/clients/team-d/delete", **wrong)
        assert refused.status == 400
        assert "to confirm" in refused.text
    assert await stored.find(rig.console.store.engine, "team-d") is not None
    gone = await act(rig, "/clients/team-d/delete", confirm="team-d")
    assert (gone.status, gone.headers["Location"]) == (
        303,
        "/admin/clients?done=deleted&name=team-d",
    )
    assert await stored.find(rig.console.store.engine, "team-d") is None
    assert (await audit.recent(rig.console.store))[0].action == "client delete"
    assert (await page(rig, "/clients/team-d")).status == 404


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "-bad"}, "name: 1 to 64 letters"),
        ({"name": "x" * 65}, "name: 1 to 64 letters"),
        ({"name": "ok", "expires": "tomorrow"}, "expires: &#39;tomorrow&#39;: not a date"),
        ({"name": "ok", "allow_ip": "10.0.0.0/33"}, "allow_ip: &#39;10.0.0.0/33&#39; is not an IP"),
        ({"name": "ok", "rpm": "-1"}, "rpm: a whole number"),
        ({"name": "ok", "quota": "1e3"}, "quota: a whole number"),
        ({"name": "ok", "period": "year"}, "period: one of day, week, month"),
        ({"name": "ok", "notes": "line\nbreak"}, "notes: one line of printable text"),
        ({"name": "ci-bot"}, "already declared in the config file"),
    ],
)
async def test_bad_input_is_shown_on_the_page_and_nothing_stored(
    rig: ConsoleRig, fields: dict[str, str], message: str
) -> None:
    await refused_create(rig, fields, message)


async def test_a_taken_name_is_refused(rig: ConsoleRig) -> None:
    await act(rig, "/clients", name="twice")
    again = await act(rig, "/clients", name="twice")
    assert again.status == 400
    assert "a client named &#39;twice&#39; exists already" in again.text


async def test_the_table_shows_each_clients_tokens_of_the_day_and_week(
    rig: ConsoleRig, clock: ManualClock
) -> None:
    await act(rig, "/clients", name="busy")
    hour = int(clock.now // 3600) * 3600

    def count(at: int, tokens: int) -> TokenCount:
        return TokenCount(at, "busy", "fast", "openai", "gpt-4o", 1, 1, tokens, tokens, 0, 0, 0)

    await token_usage.record(rig.console.store, [count(hour, 50), count(hour - 3 * 86_400, 400)])
    listed = await page(rig, "/clients")
    assert "<td>100 / 900</td>" in listed.text
    shown = await page(rig, "/clients/busy")
    assert "100 in the last 24 h, 900 in the last 7 days" in shown.text


async def test_a_running_gateway_refuses_a_client_disabled_from_the_console(
    db_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    async with FakeUpstream() as fake:
        settings = load_settings(write_config(tmp_path, db_url, fake.openai_base))
        settings = settings.model_copy(update={"admin": AdminSettings(token="a" * 40, port=0)})
        store = await Store.open(db_url, clock=clock)
        await store.upgrade()
        try:
            async with console_rig(settings, store, clock) as rig:
                bearer = {"Authorization": f"Bearer {'a' * 40}"}
                made = await rig.post(
                    "/clients", headers=bearer, data={"name": "live", "routes": "fast"}
                )
                secret = secret_of(made)
                async with start_gateway(settings) as running:
                    assert await answers(running.url, secret) == 200
                    clock.advance(1)  # the gateways reload when a client's update time moves
                    off = await rig.post("/clients/live/disable", headers=bearer)
                    assert off.status == 303

                    async def refused() -> bool:
                        return await answers(running.url, secret) == 401

                    await eventually(refused, within=5)
        finally:
            await store.close()
