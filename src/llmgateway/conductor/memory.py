"""Process memory after start-up: what a gateway process gives back once its pool is loaded
(called by the commands that own the process, never by an embedding application)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator


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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The garbage collector off for the block (the pool's first load): loading 100,000 keys
    makes no cyclic garbage, but its allocations would trigger full collections over every
    object of the process again and again, each stalling the event loop (and `/healthz`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
