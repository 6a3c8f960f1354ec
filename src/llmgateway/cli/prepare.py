"""How `gateway` and `serve` get the store ready before and while they serve.

A store already up to date (its schema at this version's head, keys in it) is served as it is:
the check takes a few small queries in this process, without Alembic, and the start-up sync of
the key files runs in the background once the pool is loaded. Otherwise (a new database, a
pending migration, the original llmGateway's tables, no keys yet) the migration and a first
sync run before serving, in a child process so that the gateway never loads Alembic and the
parsed key files (its resident memory stays small); the log says so first, since on a large
store that takes a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmgateway.conductor.app import AfterLoad
    from llmgateway.config.settings import Settings
    from llmgateway.store import Store

log = logging.getLogger("llmgateway.start")


def prepare_store(settings: Settings, config: str | None) -> bool:
    """Make the store ready to serve from; True when the start-up sync of the key files is
    still to run (in the background, `sync_in_child` or `sync_in_process`). A store that
    cannot be used ends the command as `db upgrade` does (exit 1 with one line)."""
    from llmgateway.store.schema import SCHEMA_HEAD

    why = _why_prepare(settings)
    if why is None:
        log.info(
            "store: schema at %s, keys present: serving them at once; the key files are synced "
            "in the background",
            SCHEMA_HEAD,
        )
        return True
    log.info(
        "store: %s: migrating and syncing the key files before serving (a migration or a first "
        "sync of many keys may take a while)",
        why,
    )
    started = time.monotonic()
    done = subprocess.run(_child(config, "upgrade", "--sync"), check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    log.info("store: ready in %.1f s", time.monotonic() - started)
    return False


def _why_prepare(settings: Settings) -> str | None:
    """Why the store must be prepared before serving, or None (see `SchemaState`)."""
    from llmgateway.store import Store

    async def check() -> str | None:
        async with await Store.configured(settings.database) as store:
            return (await store.schema_state()).why_prepare()

    try:
        return asyncio.run(check())
    except Exception as error:  # the child says what is wrong, and exits with its code
        return f"it could not be checked ({type(error).__name__})"


def _child(config: str | None, *command: str) -> list[str]:
    """`llmgateway db COMMAND…` with this config, as a child process."""
    from llmgateway.config.load import config_path

    # the environment file was read here already, into the environment the child inherits
    head = [sys.executable, "-m", "llmgateway", "--env-file", "none", "db", *command]
    return [*head, "--config", str(config_path(config))]


_BACKGROUND = (
    "start-up sync of the key files: running in the background; until it ends the pool serves "
    "the keys the store had (one removed from the files while the gateway was down included)"
)


def sync_in_child(config: str | None) -> AfterLoad:
    """The start-up sync as a child process (`db sync`), for `create_app(after_load=…)`."""

    async def sync(_: Store) -> None:
        log.info("%s", _BACKGROUND)
        started = time.monotonic()
        argv = _child(config, "sync")
        child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL)
        try:
            code = await child.wait()
        finally:
            if child.returncode is None:  # the gateway stops first: so does the sync
                child.terminate()
                await child.wait()
        _log_end(code, time.monotonic() - started)

    return sync


def sync_in_process(settings: Settings) -> AfterLoad:
    """The start-up sync in this process (`serve`, whose Keeper syncs here anyway)."""

    async def sync(store: Store) -> None:
        from llmgateway.keyfiles import run_sync
        from llmgateway.store.locks import exclusive_start

        log.info("%s", _BACKGROUND)
        started = time.monotonic()
        try:
            async with exclusive_start(store.engine.url):
                await run_sync(settings, store)
        except Exception as error:  # the Keeper's next sync tries again
            log.warning("start-up sync of the key files failed: %s", type(error).__name__)
            return
        _log_end(0, time.monotonic() - started)

    return sync


@contextlib.contextmanager
def sync_beside(config: str | None) -> Iterator[None]:
    """The start-up sync as a child process while the block runs (`gateway --workers N`:
    each worker process picks up what it changed at its next refresh from the store)."""
    log.info("%s", _BACKGROUND)
    started = time.monotonic()
    child = subprocess.Popen(_child(config, "sync"), stdout=subprocess.DEVNULL)  # noqa: S603
    stopping = threading.Event()

    def reap() -> None:
        code = child.wait()
        if not stopping.is_set():
            _log_end(code, time.monotonic() - started)

    threading.Thread(target=reap, name="start-up-sync", daemon=True).start()
    try:
        yield
    finally:
        stopping.set()
        if child.poll() is None:
            child.terminate()
            child.wait()


def _log_end(code: int, seconds: float) -> None:
    if code == 0:
        log.info("start-up sync of the key files: done in %.1f s", seconds)
    else:
        log.warning(
            "start-up sync of the key files failed (exit %d): the pool serves the store's keys; "
            "the Keeper's next sync tries again",
            code,
        )
