"""Configuration changes without a restart: a `ConfigFollower` re-reads the config file on
SIGHUP, when the file changes (`gateway.watch_config`: its size, mtime and hash looked at every
second) and when `llmgateway reload` stored a request (`store.config_runs`; on PostgreSQL its
notice wakes the follower at once), and hands a valid new config to the process (`apply`).

A new config is refused as a whole when it has any problem (each logged as `check-config`
prints it) or a weak token the command would refuse at start: the config in force stays, and
`warning` says so until a later reload is applied. Every reload is counted by outcome
(`llmgateway_config_reloads_total`), and the process's row in the store says the config hash it
runs. Settings a process keeps until restarted (`config.reload_diff.RESTART_ONLY`) are named
in a log line when they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from llmgateway.config.load import MAX_CONFIG_BYTES, load_settings
from llmgateway.config.problems import ConfigError
from llmgateway.config.reload_diff import ConfigDiff, config_diff, restart_line
from llmgateway.config.settings import Settings
from llmgateway.observe.metrics import Metrics
from llmgateway.store.config_runs import ConfigRun, latest_request, report_run

log = logging.getLogger("llmgateway.config")

POLL_SEC = 1.0
"""How often the follower looks at the file (`watch_config`) and wakes for its other work."""
RENEW_SEC = 60.0
"""How often the process's row in the store is renewed between reloads."""
HASH_CHARS = 12
"""Hex digits of the config hash shown and stored (of a SHA-256 of the file's bytes)."""

Apply = Callable[[Settings, ConfigDiff], Awaitable[None]]
"""Puts valid new settings in force in the process (they differ from those in force)."""


@dataclass(frozen=True, slots=True)
class Following:
    """What a process's command says about following its config file: the file, the lines
    refusing a config beyond its validation (`check`: the weak tokens the command refuses at
    start), and whether SIGHUP is the process's to handle (not for an app embedded elsewhere)."""

    path: Path
    check: Callable[[Settings], list[str]] | None = None  # picklable: handed to workers
    sighup: bool = True

    def refusals(self, settings: Settings) -> list[str]:
        """What `check` refuses of `settings` (nothing without one)."""
        return [] if self.check is None else self.check(settings)


class Outcome(enum.StrEnum):
    """How a reload ended (the metric's `outcome` label)."""

    APPLIED = "applied"
    REFUSED = "refused"
    UNCHANGED = "unchanged"
    STARTED = "started"  # not a reload: the config the process started with (store row only)


def config_hash(path: Path) -> str:
    """The hash of the config file's bytes (`HASH_CHARS` hex digits), as `llmgateway reload`
    and `llmgateway status` show it. Raises OSError when the file cannot be read."""
    with path.open("rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def process_name() -> str:
    """This process in the store's rows: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


@dataclass(slots=True)
class ConfigFollower:
    """Follows one process's config file (see the module docstring). `settings` are those in
    force; `check` returns the lines refusing a config beyond its validation (weak tokens);
    `engine` is the store's (None: no requests read, no row written); `on_warning` is told
    the warning (empty: none) after every reload."""

    path: Path
    settings: Settings
    apply: Apply
    role: str
    metrics: Metrics
    check: Callable[[Settings], list[str]] = lambda _settings: []
    engine: AsyncEngine | None = None
    on_warning: Callable[[str], None] = lambda _warning: None
    clock: Callable[[], float] = time.time
    process: str = field(default_factory=process_name)
    config_hash: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # SIGHUP: reload now
    notice: asyncio.Event = field(default_factory=asyncio.Event)  # a store notice: look now
    outcome: Outcome = Outcome.STARTED
    _stamp: tuple[int, int] | None = None
    _request_id: int | None = None  # the newest request seen (None: the store not read yet)
    _asked: str = ""  # the config hash the last request read (`llmgateway reload`'s file)
    _reported_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._stamp = _stamp(self.path)
        if not self.config_hash:
            with contextlib.suppress(OSError):
                self.config_hash = config_hash(self.path)

    @contextlib.contextmanager
    def on_sighup(self) -> Iterator[None]:
        """SIGHUP asks for a reload while the block runs (the running loop's handler)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.wake.set)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    async def reload(self) -> Outcome:
        """Re-read the config file now and apply it when it is valid and differs."""
        async with self._lock:
            self.outcome = await self._reload()
        self.metrics.config_reloads.labels(outcome=self.outcome.value).inc()
        await self.report()
        return self.outcome

    async def _reload(self) -> Outcome:
        self._stamp = _stamp(self.path)
        try:
            new_hash = config_hash(self.path)
            new = load_settings(self.path)
        except ConfigError as exc:
            return self._refuse([str(problem) for problem in exc.problems])
        except OSError as exc:
            return self._refuse([f"{self.path}: cannot read the config file: {exc.strerror}"])
        refusals = self.check(new)
        if refusals:
            return self._refuse(refusals)
        self.on_warning("")
        diff = config_diff(self.settings, new)
        self.config_hash = new_hash
        if diff.empty:
            log.info("config reload: %s (%s) is unchanged", self.path, new_hash)
            return Outcome.UNCHANGED
        line = restart_line(diff)
        if line is not None:
            log.warning("%s", line)
        await self.apply(new, diff)
        self.settings = new
        live = ", ".join(diff.live()) or "nothing that applies before a restart"
        log.info("config reload applied (%s, config %s): %s", self.path, new_hash, live)
        return Outcome.APPLIED

    def _refuse(self, problems: list[str]) -> Outcome:
        for problem in problems:
            log.error("config reload refused: %s", problem)
        warning = (
            f"config reload refused ({len(problems)} problem(s) in {self.path}, see the log): "
            f"the config {self.config_hash} stays in force"
        )
        log.error("%s", warning)
        self.on_warning(warning)
        return Outcome.REFUSED

    async def report(self) -> None:
        """Write (renew) this process's row in the store: the config it runs."""
        if self.engine is None:
            return
        now = self.clock()
        run = ConfigRun(self.process, self.role, self.config_hash, self.outcome.value, now)
        try:
            await report_run(self.engine, run)
        except Exception as exc:  # the store may be down: the next renewal says it again
            log.warning("could not record the config this process runs: %s", type(exc).__name__)
            return
        self._reported_at = now

    async def run(self) -> None:
        """Until cancelled: reload on SIGHUP, on a changed file (`watch_config`), on a new
        request in the store (looked for every `refresh_interval_sec`, at once on a notice)."""
        if self.engine is not None:
            await self._requested()  # the requests made before this process started are done
        store_due = self.clock() + self.settings.gateway.refresh_interval_sec
        while True:
            wait = min(POLL_SEC, self.settings.gateway.refresh_interval_sec)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(self.wake, self.notice), wait)
            due = self.wake.is_set() or self._file_changed()
            self.wake.clear()
            now = self.clock()
            if self.engine is not None and (self.notice.is_set() or now >= store_due):
                self.notice.clear()
                store_due = now + self.settings.gateway.refresh_interval_sec
                due = await self._requested() or due
            if due:
                await self.reload()
                self._compare_asked()
            elif self.engine is not None and now - self._reported_at >= RENEW_SEC:
                await self.report()

    def _file_changed(self) -> bool:
        if not self.settings.gateway.watch_config:
            return False
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            return config_hash(self.path) != self.config_hash
        except OSError:
            return False  # being replaced, or gone: looked at again at the next change

    async def _requested(self) -> bool:
        """Whether `llmgateway reload` stored a request since the last one seen."""
        assert self.engine is not None
        try:
            latest = await latest_request(self.engine)
        except Exception as exc:  # the store may be down: looked at again later
            log.debug("reload requests unreadable: %s", type(exc).__name__)
            return False
        newest = 0 if latest is None else latest[0]
        seen, self._request_id = self._request_id, newest
        if seen is None or newest <= seen:
            return False  # the requests made before this process started are done
        self._asked = "" if latest is None else latest[1]
        log.info("config reload requested through the store (for config %s)", self._asked)
        return True

    def _compare_asked(self) -> None:
        """Say when the file `llmgateway reload` read differs from this process's own."""
        asked, self._asked = self._asked, ""
        if asked and asked != self.config_hash:
            log.warning(
                "`llmgateway reload` read config %s; this process runs %s from %s (not the same)",
                asked,
                self.config_hash,
                self.path,
            )


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
