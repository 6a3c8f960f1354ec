"""Keeping many gateway processes coherent with one store.

- `exclusive_start(url)`: N processes starting at once (`gateway --workers N`, or several
  machines) migrate and sync one after another. PostgreSQL's migration already holds an
  advisory lock and its writers serialize on the revision row; SQLite gets an exclusive `flock`
  on `<database>.start.lock` around migration and the start-up sync, so its schema is never
  created twice at once. The later processes find nothing to do and start in milliseconds.
- `follow_store(store, wake)`: on PostgreSQL a `Listener` that sets `wake` on every notice, so
  the pool refresh runs at once (coalesced) instead of at the next interval. SQLite: no
  listener; the interval refresh is the only way (and always the safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.engine import URL

from llmgateway.private_files import FILE_MODE, make_private_folder
from llmgateway.store import Store
from llmgateway.store.locks import lock_path
from llmgateway.store.notify import Listener, Notice


def start_lock_path(url: URL) -> Path | None:
    """The start-up lock file of a SQLite database (None for PostgreSQL or in-memory)."""
    return lock_path(url, ".start.lock")


@contextlib.asynccontextmanager
async def exclusive_start(url: URL) -> AsyncIterator[None]:
    """Hold the start-up lock of a SQLite database for the block (waiting for it without
    blocking the event loop); a no-op on PostgreSQL. The lock dies with its process."""
    path = start_lock_path(url)
    if path is None:
        yield
        return
    make_private_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def follow_store(store: Store, wake: asyncio.Event) -> Listener | None:
    """A listener that sets `wake` on every store notice (PostgreSQL), or None (SQLite).
    Run it with `asyncio.create_task(listener.run())`."""
    url = store.engine.url
    if url.get_backend_name() != "postgresql":
        return None

    def heard(_notice: Notice) -> None:
        wake.set()

    return Listener(url, heard)


def return_freed_memory() -> None:
    """Give the memory freed after start-up (the file sync and the first snapshot of, say,
    100,000 keys) back to the operating system (glibc's `malloc_trim`; a no-op elsewhere),
    and take what survives start-up out of the garbage collector's sight.

    `gc.freeze()` moves the start-up objects (libraries, settings, the pool) to a permanent
    generation: a full collection, triggered now and then by per-request allocations, would
    otherwise walk all of them again and again on the request path.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
