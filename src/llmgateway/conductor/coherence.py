"""Keeping many gateway processes coherent with one store: `follow_store(store, wake)` is, on
PostgreSQL, a `Listener` that sets `wake` on every notice, so the pool refresh runs at once
(coalesced) instead of at the next interval. SQLite: no listener; the interval refresh is the
only way (and always the safety net). Through a transaction pooler a LISTEN does not last: the
listener connects to `database.direct_url`, and without one the gateway follows the store by
its interval refresh alone (said once at start, and by `/readyz`). Start-up of many processes
at once is serialized by `store.locks.exclusive_start`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from llmgateway.store import Store
from llmgateway.store.notify import Kind, Listener, Notice

log = logging.getLogger("llmgateway.app")


def follow_store(
    store: Store,
    wake: asyncio.Event,
    interval: float,
    on_config: Callable[[], None] | None = None,
) -> Listener | None:
    """A listener that sets `wake` on every store notice (and calls `on_config` on a reload
    request's), on PostgreSQL, or None (SQLite, or a
    transaction pooler without `database.direct_url`: a warning says so, and that the store
    is followed every `interval` seconds). Run it with `asyncio.create_task(listener.run())`."""
    plan = store.plan
    if plan is None:
        return None
    target = plan.session_target()
    if target is None:
        log.warning(
            "database.url reaches %s and no database.direct_url is set: no store notices; "
            "the pool follows the store by polling every %g s (gateway.refresh_interval_sec)",
            plan.describe(),
            interval,
        )
        return None
    url, pooler = target

    def heard(notice: Notice) -> None:
        if notice.kind == Kind.CONFIG and on_config is not None:
            on_config()
        wake.set()

    return Listener(url, heard, pooler)
