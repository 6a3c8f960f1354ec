"""Keeping many gateway processes coherent with one store: `follow_store(store, wake)` is, on
PostgreSQL, a `Listener` that sets `wake` on every notice, so the pool refresh runs at once
(coalesced) instead of at the next interval. SQLite: no listener; the interval refresh is the
only way (and always the safety net). Start-up of many processes at once is serialized by
`store.locks.exclusive_start`.
"""

from __future__ import annotations

import asyncio

from llmgateway.store import Store
from llmgateway.store.notify import Listener, Notice


def follow_store(store: Store, wake: asyncio.Event) -> Listener | None:
    """A listener that sets `wake` on every store notice (PostgreSQL), or None (SQLite).
    Run it with `asyncio.create_task(listener.run())`."""
    url = store.engine.url
    if url.get_backend_name() != "postgresql":
        return None

    def heard(_notice: Notice) -> None:
        wake.set()

    return Listener(url, heard)
