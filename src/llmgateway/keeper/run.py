"""The Keeper: file sync, key and proxy probing, the upstream's model lists, and maintenance,
under one task group, each step also callable on its own.

A key probe round is `keeper.key_round.KeyRound`. Proxies are checked in their own loop, woken
when the next proxy check is due (`worker.proxy_check_interval_sec` after a live finding,
`proxy_retry_sec` after a dead one), never held up by a long key round. Maintenance is
`keeper.upkeep`; bulk jobs (the console's bulk actions) run beside it all (`keeper.bulk_jobs`).
Whatever a step does not finish is left for the next one: a failed step is logged and retried
in the next round. Time comes from the injected `clock` and `sleep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmgateway.config.settings import ProviderSettings, ProxyMode, Settings
from llmgateway.core.egress import NoHealthyProxyError, egress_for
from llmgateway.core.guard import egress_label
from llmgateway.keeper import upkeep
from llmgateway.keeper.bulk_jobs import POLL_SEC, JobRunner
from llmgateway.keeper.key_round import KeyRound
from llmgateway.keeper.model_lists import FetchError, fetch_names
from llmgateway.keeper.prober import proxy_alive
from llmgateway.keeper.probes import HOUR
from llmgateway.keeper.reporting import RoundLog, describe_progress
from llmgateway.keeper.summary import (
    MaintenanceSummary,
    ModelListSummary,
    OnceSummary,
    Progress,
    ProxySummary,
    RoundSummary,
)
from llmgateway.keeper.watch import watch_folders
from llmgateway.keyfiles import SyncReport, run_sync
from llmgateway.observe.masking import mask
from llmgateway.observe.metrics import Metrics
from llmgateway.providers.catalog import is_pattern
from llmgateway.store import Store, keeper_tasks, proxy_checks
from llmgateway.store import probes as queries
from llmgateway.store.key_actions import CHUNK
from llmgateway.store.locks import single_keeper
from llmgateway.store.proxy_checks import ProxyCheck, ProxyResult
from llmgateway.transport.upstream import HttpUpstream, Upstream

log = logging.getLogger("llmgateway.keeper")

CLAIM_SIZE = 1000
"""Rows leased per claim; a round claims again until nothing due is left."""
PROXY_HOLD_SEC = 120.0
"""How long a claimed proxy is held before another keeper may probe it."""
_PROXY_CONCURRENCY = 20
_LEAST_WAIT_SEC = 0.1
"""The shortest wait between two passes of a loop woken by due times (no busy loop when a
due row cannot be taken)."""


def default_owner() -> str:
    """A lease owner id unique to this keeper: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def log_progress(progress: Progress) -> None:
    """The long run's progress report: one INFO line."""
    log.info("probe round: %s", describe_progress(progress))


@dataclass(slots=True)
class Keeper:
    """The long-running worker. `run(stop)` runs everything until `stop` is set;
    `probe_round()`, `probe_proxies()` and `maintain()` are its single steps."""

    settings: Settings
    store: Store
    upstream: Upstream = field(default_factory=HttpUpstream)
    owner: str = field(default_factory=default_owner)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_progress: Callable[[Progress], None] = log_progress
    claim_size: int = CLAIM_SIZE
    ticker: Callable[[], float] = time.monotonic  # the first checks' pace
    metrics: Metrics = field(default_factory=Metrics.create)
    # when each provider's upstream model list is next fetched (absent: at the next chance)
    models_due: dict[str, float] = field(default_factory=dict)
    job_chunk: int = CHUNK  # keys per transaction of a bulk job
    job_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # a job's rest between chunks

    # --- one probe round ------------------------------------------------------------------------

    async def probe_round(self, stop: asyncio.Event | None = None) -> RoundSummary:
        """Probe every row due now, once (`KeyRound`). With `stop` set, no new batch starts; the
        rows not probed are released and stay due."""
        keys = KeyRound(
            self.settings,
            self.store,
            self.upstream,
            self.owner,
            self.metrics,
            self.clock,
            self.sleep,
            self.on_progress,
            self.claim_size,
            self.ticker,
        )
        return await keys.run(stop)

    # --- the upstream's model names ------------------------------------------------------------

    async def fetch_model_lists(self) -> ModelListSummary:
        """Fetch and store the upstream's model names of every enabled provider with a pattern
        entry whose fetch is due: the first time, then every `worker.sync_interval_sec`. A
        provider without a usable key stays due; a failed fetch keeps the stored names."""
        now = self.clock()
        due = [
            (name, provider)
            for name, provider in _listing_providers(self.settings)
            if self.models_due.get(name, now) <= now
        ]
        if not due:
            return ModelListSummary()
        proxies = await proxy_checks.healthy_proxies(self.store)
        gate = asyncio.Semaphore(self.settings.worker.max_concurrent_providers)

        async def one(name: str, provider: ProviderSettings) -> _Listed:
            async with gate:
                return await self._fetch_model_list(name, provider, proxies.get(name, []), now)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(name, provider)) for name, provider in due]
        found = [task.result() for task in tasks]
        return ModelListSummary(
            changed=found.count(_Listed.CHANGED),
            unchanged=found.count(_Listed.UNCHANGED),
            failed=found.count(_Listed.FAILED),
            without_key=found.count(_Listed.WITHOUT_KEY),
        )

    async def _fetch_model_list(
        self, name: str, provider: ProviderSettings, proxies: list[str], now: float
    ) -> _Listed:
        secret = await queries.usable_key(self.store, name)
        if secret is None:
            log.info("provider %s: no usable key to fetch the models list with yet", name)
            return _Listed.WITHOUT_KEY
        self.models_due[name] = now + self.settings.worker.sync_interval_sec
        try:
            egress = egress_for(provider, secret, proxies)
            names = await fetch_names(self.upstream, provider, secret, egress)
        except (NoHealthyProxyError, FetchError) as error:
            log.warning(
                "provider %s: models list not fetched with key %s (%s); the last one is kept",
                name,
                mask(secret),
                error,
            )
            return _Listed.FAILED
        changed = await self.store.save_model_names(name, names)
        log.info("provider %s: %d model names listed upstream", name, len(names))
        return _Listed.CHANGED if changed else _Listed.UNCHANGED

    # --- proxies and maintenance -------------------------------------------------------------

    async def probe_proxies(self) -> ProxySummary:
        """Probe every due proxy (through it, to its provider); mark dead ones, revive live ones."""
        now = self.clock()
        checks = await proxy_checks.claim_due_proxies(self.store, now, now + PROXY_HOLD_SEC, 1000)
        gate = asyncio.Semaphore(_PROXY_CONCURRENCY)
        worker = self.settings.worker

        async def probe(check: ProxyCheck) -> ProxyResult | None:
            provider = self.settings.providers.get(check.provider)
            if provider is None:
                return None
            async with gate:
                alive, why = await proxy_alive(self.upstream, provider, check.url)
            delay = worker.proxy_check_interval_sec if alive else worker.proxy_retry_sec
            _log_change(check, alive, why)
            return ProxyResult(check.proxy_id, alive, self.clock(), self.clock() + delay, why)

        found = await asyncio.gather(*(probe(check) for check in checks))
        results = [r for r in found if r is not None]
        await proxy_checks.write_proxy_results(self.store, results)
        alive = sum(r.alive for r in results)
        return ProxySummary(alive=alive, dead=len(results) - alive)

    async def maintain(self) -> MaintenanceSummary:
        """Run the maintenance tasks that are due (`keeper.upkeep`): the purge of long-removed
        keys and proxies, VACUUM. When each last ran is kept in the store."""
        return await upkeep.maintain(self.settings, self.store, self.owner, self.clock)

    async def until_proxy_check(self) -> float:
        """Seconds until the next proxy check is due (0: now), at most
        `proxy_check_interval_sec`; `sync_interval_sec` when there is no proxy (the sync
        that adds some wakes the proxy loop)."""
        worker = self.settings.worker
        due = await proxy_checks.next_check_at(self.store)
        if due is None:
            return worker.sync_interval_sec
        return min(max(due - self.clock(), 0.0), worker.proxy_check_interval_sec)

    # --- the long run -------------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event, on_round: Callable[[RoundSummary], None] = lambda _: None
    ) -> None:
        """Sync, probe and maintain until `stop` is set, then release every lease and return.
        On SQLite a second keeper is refused (`KeeperRunningError`)."""
        with single_keeper(self.store.engine.url):
            wake = asyncio.Event()
            synced = asyncio.Event()  # a sync may have brought keys that are due at once
            listing = asyncio.Event()  # the same, for the model lists
            proxied = asyncio.Event()  # the same, for proxies
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._sync_loop(stop, wake, (synced, listing, proxied)))
                    if self.settings.worker.watch_files:
                        group.create_task(self._watch_loop(stop, wake))
                    group.create_task(self._probe_loop(stop, synced, on_round))
                    if _pooled_providers(self.settings):
                        group.create_task(self._proxy_loop(stop, proxied))
                    if _listing_providers(self.settings):
                        group.create_task(self._model_list_loop(stop, listing))
                    group.create_task(self._maintenance_loop(stop))
                    group.create_task(self._job_loop(stop))
            finally:
                await asyncio.shield(queries.release_leases(self.store, self.owner))
                await self.upstream.close()

    async def _sync_loop(
        self, stop: asyncio.Event, wake: asyncio.Event, synced: Sequence[asyncio.Event]
    ) -> None:
        while not stop.is_set():
            wake.clear()
            with _survive("sync"):
                self.metrics.synced(await run_sync(self.settings, self.store))
                await keeper_tasks.mark(self.store, keeper_tasks.SYNC, self.clock())
                for event in synced:
                    event.set()
            await _first(stop, wake, self.settings.worker.sync_interval_sec)

    async def _model_list_loop(self, stop: asyncio.Event, synced: asyncio.Event) -> None:
        """After each sync (the first one brings the keys to fetch with), fetch the model
        lists that are due; at the latest every `sync_interval_sec`."""
        while not stop.is_set():
            await _first(stop, synced, self.settings.worker.sync_interval_sec)
            synced.clear()
            if stop.is_set():
                return
            with _survive("models list fetch"):
                await self.fetch_model_lists()

    async def _watch_loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        await watch_folders(_watched(self.settings), stop, wake)

    async def _probe_loop(
        self,
        stop: asyncio.Event,
        synced: asyncio.Event,
        on_round: Callable[[RoundSummary], None],
    ) -> None:
        rounds = RoundLog()
        while not stop.is_set():
            synced.clear()
            with _survive("probe round"):
                summary = await self.probe_round(stop)
                level, line = rounds.entry(summary, self.ticker())
                log.log(level, "%s", line)
                on_round(summary)
            await _first(stop, synced, self.settings.worker.probe_interval_sec)

    async def _proxy_loop(self, stop: asyncio.Event, synced: asyncio.Event) -> None:
        """Check the proxies that are due, then sleep until the next one is (or a sync)."""
        while not stop.is_set():
            synced.clear()
            wait = self.settings.worker.proxy_retry_sec  # when the store cannot say
            with _survive("proxy check"):
                await self.probe_proxies()
                wait = await self.until_proxy_check()
            await _first(stop, synced, max(wait, _LEAST_WAIT_SEC))

    async def _job_loop(self, stop: asyncio.Event) -> None:
        """Run the bulk jobs submitted (or left by a keeper that died), then look again every
        `POLL_SEC`."""
        runner = JobRunner(self.store, self.owner, self.job_chunk, sleep=self.job_sleep)
        while not stop.is_set():
            with _survive("bulk job"):
                await runner.run_pending(stop)
            await _first(stop, None, POLL_SEC)

    async def _maintenance_loop(self, stop: asyncio.Event) -> None:
        """Run the due maintenance, then sleep until the next task is due (at most an hour:
        another keeper may have run it, or the settings changed)."""
        while not stop.is_set():
            wait = HOUR
            with _survive("maintenance"):
                await self.maintain()
                due = await upkeep.next_due(self.settings, self.store)
                if due is not None:
                    wait = min(max(due - self.clock(), 0.0), HOUR)
            await _first(stop, None, max(wait, _LEAST_WAIT_SEC))


async def run_once(
    settings: Settings,
    store: Store,
    *,
    upstream: Upstream | None = None,
    on_progress: Callable[[Progress], None] = log_progress,
    on_sync: Callable[[SyncReport], None] = lambda _: None,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
) -> OnceSummary:
    """`worker --once`: one sync (`on_sync` is told at once), one proxy round, the bulk jobs
    submitted (to their end, before the probes: a re-check job's keys are probed in this
    round), one probe round of everything due, the model lists that are due, then the
    maintenance that is due. With `stop` set, the job in hand is left for the next keeper,
    the probe round ends early (its summary so far) and the rest is skipped."""
    with single_keeper(store.engine.url):
        keeper = Keeper(
            settings, store, upstream or HttpUpstream(), clock=clock, on_progress=on_progress
        )
        upkept = MaintenanceSummary()
        try:
            report = await run_sync(settings, store)
            await keeper_tasks.mark(store, keeper_tasks.SYNC, clock())
            on_sync(report)
            proxies = await keeper.probe_proxies()
            runner = JobRunner(store, keeper.owner, keeper.job_chunk, sleep=keeper.job_sleep)
            jobs = await runner.run_pending(stop or asyncio.Event())
            summary = await keeper.probe_round(stop)
            if not summary.stopped:
                await keeper.fetch_model_lists()  # after the probes: with a key proven valid
                upkept = await keeper.maintain()
        finally:
            await keeper.upstream.close()
        return OnceSummary(report, proxies, summary, upkept, jobs)


async def _first(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    """Wait until `stop` (or `wake`) is set, or `seconds` pass."""
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


@contextlib.contextmanager
def _survive(what: str) -> Iterator[None]:
    """Log a failed step and carry on: the next round retries (the store may be back)."""
    try:
        yield
    except Exception as exc:
        log.error("%s failed (%s); retrying in the next round", what, type(exc).__name__)


class _Listed(enum.Enum):
    """How one provider's model list fetch went."""

    CHANGED = enum.auto()
    UNCHANGED = enum.auto()
    FAILED = enum.auto()
    WITHOUT_KEY = enum.auto()


def _listing_providers(settings: Settings) -> list[tuple[str, ProviderSettings]]:
    """The enabled providers whose models lists show upstream names: those with a pattern."""
    return [
        (name, provider)
        for name, provider in settings.providers.items()
        if provider.enabled and any(is_pattern(model) for model in provider.models)
    ]


def _log_change(check: ProxyCheck, alive: bool, why: str | None) -> None:
    """Log a proxy found dead, or alive again (its URL without credentials)."""
    was_dead = check.status is proxy_checks.DEAD_PROXY
    if alive == was_dead:
        label = egress_label(check.url)
        if alive:
            log.info("proxy %s of provider %s is alive again", label, check.provider)
        else:
            log.warning(
                "proxy %s of provider %s found dead (%s); its keys go through the provider's "
                "other proxies until it answers again",
                label,
                check.provider,
                why,
            )


def _pooled_providers(settings: Settings) -> list[str]:
    """The enabled providers with a proxy pool (stealth mode): those whose proxies are checked."""
    return [
        name
        for name, provider in settings.providers.items()
        if provider.enabled and provider.proxy_config.mode is ProxyMode.STEALTH
    ]


def _watched(settings: Settings) -> list[Path]:
    folders: list[Path] = []
    for provider in settings.providers.values():
        if not provider.enabled:
            continue
        folders.append(provider.keys_path)
        pool = provider.proxy_config.pool_list_path
        if provider.proxy_config.mode is ProxyMode.STEALTH and pool is not None:
            folders.append(pool)
    return folders
