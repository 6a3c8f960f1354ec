"""The audit log: what was done to the keys, breakers and clients, by whom, from where.

Every state-changing action of the console and of the `llmgateway keys` commands adds one row.
A row never holds a secret: the detail names a filter in words, a key by its fingerprint or a
client by its name (and the rules changed, never their values nor a token), and
the client's own text (user agent) is cut to a bounded length. Rows older than the retention are
purged by the Keeper's upkeep (`purge_before`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from llmgateway.records import Actor
from llmgateway.store import Store
from llmgateway.store.tables import audit_log

TEXT_LIMIT = 200
"""The longest session, address, user agent or detail kept (longer text is cut, marked `…`)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded action."""

    at: float
    session: str
    address: str
    user_agent: str
    action: str
    detail: str
    keys: int


def _bounded(text: str) -> str:
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= TEXT_LIMIT else clean[: TEXT_LIMIT - 1] + "…"


async def record(store: Store, actor: Actor, action: str, detail: str, keys: int) -> None:
    """Add one action to the log: `action` (e.g. `disable`), `detail` (what it was applied to,
    never a secret) and how many keys it concerned."""
    row = {
        "at": store.clock(),
        "session": _bounded(actor.session),
        "address": _bounded(actor.address),
        "user_agent": _bounded(actor.user_agent),
        "action": _bounded(action),
        "detail": _bounded(detail),
        "keys": keys,
    }
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(audit_log).values(**row))


async def recent(store: Store, limit: int = 20) -> list[AuditEntry]:
    """The newest `limit` actions, newest first."""
    c = audit_log.c
    query = (
        sa.select(c.at, c.session, c.address, c.user_agent, c.action, c.detail, c["keys"])
        .order_by(c.at.desc(), c.id.desc())
        .limit(limit)
    )
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [AuditEntry(*row) for row in rows]


async def purge_before(store: Store, cutoff: float) -> int:
    """Delete the actions recorded before `cutoff` (epoch seconds); how many were deleted."""
    async with store.engine.begin() as conn:
        deleted = await conn.execute(sa.delete(audit_log).where(audit_log.c.at < cutoff))
    return deleted.rowcount
