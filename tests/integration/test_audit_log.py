"""The audit log on real stores (SQLite, PostgreSQL): newest first, bounded text, no control
characters, purge by age."""

from __future__ import annotations

from tests.helpers import ManualClock

from llmgateway.records import Actor
from llmgateway.store import Store, audit


async def test_recent_actions_come_newest_first(store: Store, clock: ManualClock) -> None:
    browser = Actor(session="s-1", address="10.0.0.7", user_agent="Firefox/140")
    await audit.record(store, browser, "disable", "--provider p1", 1200)
    clock.advance(5)
    await audit.record(store, Actor.cli(), "reset", "fingerprint 3f2a9c", 1)
    entries = await audit.recent(store)
    assert [(e.action, e.detail, e.keys, e.session) for e in entries] == [
        ("reset", "fingerprint 3f2a9c", 1, "cli"),
        ("disable", "--provider p1", 1200, "s-1"),
    ]
    assert entries[1].address == "10.0.0.7"
    assert entries[1].user_agent == "Firefox/140"
    assert entries[0].at - entries[1].at == 5
    assert [e.action for e in await audit.recent(store, limit=1)] == ["reset"]


async def test_client_text_is_bounded_and_printable(store: Store) -> None:
    hostile = Actor(session="s", address="1.2.3.4", user_agent="x\x1b[31m\n" + "A" * 5000)
    await audit.record(store, hostile, "enable", "d\r\nforged line", 3)
    (entry,) = await audit.recent(store)
    assert len(entry.user_agent) == audit.TEXT_LIMIT
    assert entry.user_agent.startswith("x?[31m?A")
    assert entry.user_agent.endswith("…")
    assert entry.detail == "d??forged line"


async def test_purge_deletes_only_older_entries(store: Store, clock: ManualClock) -> None:
    await audit.record(store, Actor.cli(), "disable", "old", 1)
    clock.advance(100)
    await audit.record(store, Actor.cli(), "disable", "new", 1)
    assert await audit.purge_before(store, clock() - 50) == 1
    assert [e.detail for e in await audit.recent(store)] == ["new"]
