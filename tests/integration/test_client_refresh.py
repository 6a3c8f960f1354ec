"""The gateway's refresh of the stored clients, on SQLite and PostgreSQL: the grants are built
again only when a client changed or a rotation's grace ended (the earliest one first), never
at every refresh; and the quotas' spends are read at each refresh while a client has one."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

from tests.helpers import ManualClock

from llmgateway.conductor.app import Conductor
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.config.route_table import route_table
from llmgateway.config.settings import Settings
from llmgateway.records import TokenCount
from llmgateway.store import StatusEvent, Store
from llmgateway.store import clients as stored
from llmgateway.store.token_usage import record


def client(name: str, token: str, **values: object) -> dict[str, object]:
    return {
        "name": name,
        "token_sha256": digest(token).hex(),
        "prefix": token[:11],
        "last4": token[-4:],
        "previous_sha256": None,
        "previous_until": None,
        **stored.RULE_DEFAULTS,
        **values,
    }


async def nothing(events: Sequence[StatusEvent]) -> None:
    del events


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def test_grants_are_built_again_only_on_a_change_or_a_grace_end(
    store: Store, clock: ManualClock
) -> None:
    settings = Settings()
    gateway = Conductor(settings, store=store, clock=clock)
    gateway.use_table(route_table(settings))
    now = clock()
    await stored.create(store.engine, client("a", "sk-lgw_a-new-0001"), now)
    await gateway.refresh()
    built = gateway.clients.by_digest
    assert set(built) == {digest("sk-lgw_a-new-0001")}
    await gateway.refresh()
    assert gateway.clients.by_digest is built  # nothing changed: nothing built

    # two rotations with a grace: the old tokens work until each one's end
    rotated = {"previous_sha256": digest("sk-lgw_a-new-0001").hex(), "previous_until": now + 60}
    await stored.change(store.engine, "a", {**client("a", "sk-lgw_a-new-0002"), **rotated}, now)
    later = {"previous_sha256": digest("sk-lgw_b-old-0001").hex(), "previous_until": now + 600}
    await stored.create(store.engine, client("b", "sk-lgw_b-new-0001", **later), now)
    await gateway.refresh()
    assert len(gateway.clients.by_digest) == 4
    built = gateway.clients.by_digest
    clock.advance(59)
    await gateway.refresh()
    assert gateway.clients.by_digest is built
    clock.advance(1)  # a's grace ends: built again without its old token
    await gateway.refresh()
    assert digest("sk-lgw_a-new-0001") not in gateway.clients.by_digest
    assert digest("sk-lgw_b-old-0001") in gateway.clients.by_digest
    built = gateway.clients.by_digest
    clock.advance(60)
    await gateway.refresh()
    assert gateway.clients.by_digest is built  # b's grace ends later
    clock.advance(480)
    await gateway.refresh()
    assert set(gateway.clients.by_digest) == {
        digest("sk-lgw_a-new-0002"),
        digest("sk-lgw_b-new-0001"),
    }


async def test_a_quota_is_read_at_each_refresh_and_turns_counting_on(
    store: Store, clock: ManualClock
) -> None:
    settings = Settings()
    gateway = Conductor(settings, store=store, clock=clock)
    gateway.tokens = TokenWriter(functools.partial(record, store))
    loop = gateway.attempt_loop = AttemptLoop(gateway.upstream, StatusWriter(nothing), gateway.rng)
    gateway.use_table(route_table(settings))
    await gateway.refresh()
    assert not gateway.clients.quotas.active
    assert loop.tokens is None  # no quota, token_accounting off: nothing counted
    quota = {"quota_tokens": 100, "quota_period": "day"}
    await stored.create(store.engine, client("q", "sk-lgw_q-0001", **quota), clock())
    await gateway.refresh()
    assert gateway.clients.quotas.active
    assert loop.tokens is gateway.tokens
    hour = int(clock() // 3600) * 3600
    await record(store, [TokenCount(hour, "q", "-", "openai", "gpt", 1, 1, 40, 20, 0, 0, 0)])
    await gateway.refresh()
    spend = gateway.clients.quotas.spend("q", clock())
    assert spend is not None
    assert spend.spent == 60
