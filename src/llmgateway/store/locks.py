"""Lock files beside a SQLite database: one Keeper per database, and one process at a time
through start-up.

SQLite has no row locks, so two keepers on one file would probe the same keys twice. The first
keeper takes an exclusive `flock` on `<database>.keeper.lock` (and writes its host and pid into
it); a second one is refused with a message naming the first. The operating system drops the
lock when the process ends, however it ends, so a killed keeper never blocks the next one and
no heartbeat is needed. PostgreSQL needs no lock: row leases (`FOR UPDATE SKIP LOCKED`) let
several keepers share the work.

N processes starting at once (`gateway --workers N`, or several machines) migrate and sync one
after another: PostgreSQL's migration holds an advisory lock and its writers serialize on the
revision row; SQLite gets an exclusive `flock` on `<database>.start.lock` around migration and
the start-up sync (`exclusive_start`), so its schema is never created twice at once. The later
processes find nothing to do and start in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from sqlalchemy.engine import URL

from llmgateway.private_files import FILE_MODE, make_private_folder


class KeeperRunningError(RuntimeError):
    """Another keeper already runs on this SQLite database."""


def lock_path(url: URL, suffix: str = ".keeper.lock") -> Path | None:
    """A lock file beside a SQLite database (None for PostgreSQL or an in-memory database)."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        database = database.removeprefix("file:").partition("?")[0]
    path = Path(database).expanduser()
    return path.with_name(path.name + suffix)


@contextlib.contextmanager
def single_keeper(url: URL) -> Iterator[None]:
    """Hold the keeper lock of a SQLite database for the block; a no-op on PostgreSQL.
    Raises `KeeperRunningError` when another keeper holds it."""
    path = lock_path(url)
    if path is None:
        yield
        return
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise KeeperRunningError(
                f"another keeper ({holder}) is running on the SQLite database {url.database}; "
                "SQLite allows one keeper: stop the other one, or use PostgreSQL to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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
    fd = _open_lock(path)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _open_lock(path: Path) -> int:
    make_private_folder(path.parent)
    return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
