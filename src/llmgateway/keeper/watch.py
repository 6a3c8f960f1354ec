"""Watching the key and proxy folders, so that a change is synced at once rather than at the
next `worker.sync_interval_sec`.

A folder that does not exist yet (a new provider whose keys come later) cannot be watched
itself: its nearest existing parent is watched instead, and once the folder appears it is
watched too (and a sync reads what it already holds). Changes in a parent watched only for
that reason wake no sync. A folder that goes away is again watched through its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("llmgateway.keeper")


def watch_targets(folders: Sequence[Path]) -> frozenset[str]:
    """What to watch for `folders`: each one that exists, else its nearest existing parent
    (real paths)."""
    targets = set()
    for folder in folders:
        path = Path(os.path.realpath(folder))
        while not path.is_dir() and path != path.parent:
            path = path.parent
        targets.add(str(path))
    return frozenset(targets)


async def watch_folders(folders: Sequence[Path], stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Set `wake` whenever a file in one of `folders` changes, or one of them appears, until
    `stop` is set."""
    try:
        import watchfiles
    except ImportError:  # pragma: no cover - a declared dependency; interval sync remains
        return
    targets, first = watch_targets(folders), True
    while targets and not stop.is_set():
        if not first:
            # a folder appeared (or went): sync what it holds. The sync cannot run before the
            # new watch is set (awatch sets it before its first suspension), so a file
            # written in between is seen by one or the other.
            wake.set()
        first, changed = False, False
        try:
            changes = watchfiles.awatch(*targets, stop_event=stop, recursive=False)
            async with contextlib.aclosing(changes):
                async for found in changes:
                    now = watch_targets(folders)
                    if now != targets:
                        targets, changed = now, True
                        break
                    if _inside(found, folders):
                        wake.set()
        except Exception as exc:
            log.error("file watching failed (%s); syncing every interval", type(exc).__name__)
            return
        if not changed:
            return


def _inside(changes: Iterable[tuple[object, str]], folders: Sequence[Path]) -> bool:
    """Does one of `changes` concern an entry of one of `folders` (not of a parent watched
    only until a folder appears)?"""
    wanted = {os.path.realpath(folder) for folder in folders}
    return any(os.path.realpath(os.path.dirname(path)) in wanted for _, path in changes)
