"""`create_app(settings)`: the gateway as an ASGI application, with its lifespan wiring.

At start it loads the pool snapshot from the store (with `serve_early`, while the server already
listens), then starts the background tasks: the delta refresh from the store, the write-behind
of status changes, and the start-up work it is handed (`after_load`: the sync of the key files).
Embedded (tests) it may also apply migrations and sync the files first (`prepare`). The request
path never touches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.types import ASGIApp

from llmgateway.conductor.admin import Readiness, admin_routes
from llmgateway.conductor.admission import BodyBudget, BodyLimits
from llmgateway.conductor.attempts import AttemptLoop
from llmgateway.conductor.breaker_board import BreakerBoard
from llmgateway.conductor.call import Provider
from llmgateway.conductor.client_book import client_grants, grace_ends
from llmgateway.conductor.client_gate import Clients
from llmgateway.conductor.coherence import follow_store
from llmgateway.conductor.endpoints import Edge
from llmgateway.conductor.memory import collector_paused, return_freed_memory
from llmgateway.conductor.rebuild import built_providers
from llmgateway.conductor.route_state import Routing
from llmgateway.conductor.router import Router
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.conductor.token_writer import TokenWriter
from llmgateway.conductor.usage_writer import UsageWriter
from llmgateway.config.reload_diff import ConfigDiff
from llmgateway.config.route_table import RouteTable, route_table, token_digest
from llmgateway.config.settings import Settings
from llmgateway.core.clients import networks
from llmgateway.core.egress import NoHealthyProxyError, egress_for
from llmgateway.core.outcomes import KeyStatus
from llmgateway.core.pool_keys import KeyEntry
from llmgateway.limits import Limits
from llmgateway.observe.access import AccessLog, TokenRefusals
from llmgateway.observe.logs import Redactor
from llmgateway.observe.metrics import Metrics
from llmgateway.observe.metrics_http import metrics_served
from llmgateway.observe.store_counts import StoreCounts
from llmgateway.records import StatusCount
from llmgateway.reloading import ConfigFollower, Following
from llmgateway.store import Adoption, KeyRow, ProxyRow, Store, token_usage
from llmgateway.store import clients as stored_clients
from llmgateway.store import usage as usage_counts
from llmgateway.store.clients import ClientRecord
from llmgateway.store.locks import exclusive_start
from llmgateway.transport.upstream import HttpUpstream

log = logging.getLogger("llmgateway.app")


AfterLoad = Callable[[Store], Awaitable[object]]
"""Work that runs once the pool is loaded (see `create_app`), handed the gateway's store."""

LOAD_PAGE = 5_000
"""Keys per page when the whole pool is (re)loaded from the store."""
APPLY_CHUNK = 500
"""Keys applied to the pools at a time during a load, the event loop free in between (a
gateway that listens while its pool loads answers `/healthz` meanwhile)."""


@dataclass(slots=True)
class Conductor:
    """The gateway process (`llmgateway gateway`): its providers, pools and background tasks.
    Its requests go through the edge (`endpoints.Edge`) and the `AttemptLoop`."""

    settings: Settings
    store: Store | None = None
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    upstream: HttpUpstream = field(default_factory=HttpUpstream)
    providers: dict[str, Provider] = field(default_factory=dict)
    readiness: Readiness = field(default_factory=Readiness)
    writer: StatusWriter | None = None
    _proxies: dict[int, ProxyRow] = field(default_factory=dict)
    _healthy_proxies: dict[str, list[str]] = field(default_factory=dict)
    board: BreakerBoard = field(default_factory=BreakerBoard)
    limits: Limits | None = None  # per-key limits across gateways, when a provider sets any
    _file_problem: str | None = None  # what the store's file check said last (logged on change)
    _model_revisions: dict[str, int] = field(default_factory=dict)  # of the names in use
    log_secrets: Redactor | None = None  # the log lines' redactor, taught the keys that join
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)  # a refresh or a reload
    clients: Clients = field(default_factory=Clients)  # the stored clients, for the edge
    _client_rows: list[ClientRecord] = field(default_factory=list)
    _client_stamp: tuple[int, float, int] | None = None  # of the rows loaded last
    _table: RouteTable | None = None  # the route table the clients' grants were built on
    _grace_ends: float | None = None  # the earliest rotation's grace end among the grants
    tokens: TokenWriter | None = None  # the token counts' write-behind
    accounting: bool = False  # `gateway.token_accounting` as started (a restart changes it)
    attempt_loop: AttemptLoop | None = None  # the edge's in force (told whether to count)

    def use_table(self, table: RouteTable) -> None:
        """Build the stored clients' grants on `table` (at start, at a config reload, and
        when the stored clients change or a rotation's grace ends), and the quotas in force."""
        self._table = table
        now = self.clock()
        self.clients.by_digest = client_grants(self._client_rows, table, now)
        self._grace_ends = grace_ends(self._client_rows, now)
        every = [*table.grants.values(), *self.clients.by_digest.values()]
        self.clients.quotas.set_rules([g.client for g in every if g.client is not None], now)
        self._account()

    def _account(self) -> None:
        """Count every answer's tokens where the config asks (`gateway.token_accounting`) or
        a client has a quota to count them against; else count nothing."""
        if self.attempt_loop is not None:
            wanted = self.accounting or self.clients.quotas.active
            self.attempt_loop.tokens = self.tokens if wanted else None

    async def _load_clients(self) -> None:
        """The stored clients, read again when one changed (a small query otherwise), their
        grants rebuilt then or once a rotation's grace ends; and the quotas' spends."""
        assert self.store is not None
        stamp = await stored_clients.stamp(self.store.engine)
        changed = stamp != self._client_stamp
        if changed:
            self._client_rows = await stored_clients.all_clients(self.store.engine)
            self._client_stamp = stamp
        graced = self._grace_ends is not None and self.clock() >= self._grace_ends
        if self._table is not None and (changed or graced):
            self.use_table(self._table)
        await self.read_quotas()

    async def read_quotas(self) -> None:
        """The quotas' spends from the store: at each refresh, and when a config reload
        brought new ones (a failure is logged; the last figures stay)."""
        quotas = self.clients.quotas
        if not quotas.active or self.store is None:
            return
        try:
            await quotas.read(functools.partial(token_usage.period_sums, self.store), self.clock())
        except Exception as error:
            log.warning("quota spends not read: %s", type(error).__name__)

    def build_providers(self) -> None:
        self.providers = built_providers(self.settings, self.rng, self.limits)

    async def adopt(self, settings: Settings, metrics: Metrics, *, reload_pool: bool) -> None:
        """Serve `settings` from now on (a config reload): the providers are built anew, each
        one that stays keeping its learnt state (`conductor.rebuild`); with `reload_pool` the
        whole pool is read from the store again at once (providers added, keys re-bound to
        their proxies). Requests in flight keep the providers they started with."""
        async with self._refreshing:
            providers = built_providers(
                settings, self.rng, self.limits, self.providers, self.settings
            )
            for name, provider in providers.items():
                bound = metrics.for_provider(name, provider.settings.models)
                bound.models = frozenset(provider.settings.models)  # the `model` label's values
                old = self.providers.get(name)
                if old is None or old.guard is not provider.guard:
                    provider.guard.watch(bound.breaker)
            self.settings, self.providers = settings, providers
            self.clients.quotas.use_zone(settings.usage.zone())
            self._model_revisions.clear()  # a rebuilt provider lists its upstream names anew
            if reload_pool:
                self.readiness.revision = 0
        await self.refresh()

    def token_index(self) -> dict[bytes, tuple[str, Provider]]:
        index: dict[bytes, tuple[str, Provider]] = {}
        for provider in self.providers.values():
            for token in provider.settings.access_control.tokens:
                index[token_digest(token)] = (token, provider)
        return index

    def apply_rows(self, rows: list[KeyRow]) -> None:
        """Apply store rows to the pools: active ones join or change, the others leave."""
        now = self.clock()
        by_provider: dict[str, tuple[list[KeyEntry], set[int]]] = {
            name: ([], set()) for name in self.providers
        }
        writer = self.writer
        for row in rows:
            slot = by_provider.get(row.provider)
            if slot is None:
                continue
            if row.active and writer is not None and writer.holds(row.key_id, row.model):
                continue  # our own newer finding is on its way to the store: keep it
            entry = self._entry(row) if row.active else None
            if entry is None:
                slot[1].add(row.key_id)
            else:
                slot[0].append(entry)
        for name, (entries, removed) in by_provider.items():
            if entries or removed:
                provider = self.providers[name]
                known = provider.pool.key_ids()
                joining = {e.secret for e in entries if e.key_id not in known}
                if joining:  # so that no upstream error body hands one of them to a client
                    provider.secrets.add(joining)
                    if self.log_secrets is not None:  # nor a log line
                        self.log_secrets.add(joining)
                provider.pool.apply(entries, removed, now)

    def _entry(self, row: KeyRow) -> KeyEntry | None:
        """The pool entry of a store row, bound to its egress (None: no way out for it now)."""
        settings = self.providers[row.provider].settings
        healthy = self._healthy_proxies.get(row.provider, ())
        try:
            egress = egress_for(settings, row.secret, healthy)
        except NoHealthyProxyError:
            return None
        return KeyEntry(row.key_id, row.secret, row.model, row.status, row.cooldown_until, egress)

    def _note_proxies(self, rows: list[ProxyRow]) -> bool:
        """Track proxy health; True when a provider's set of healthy proxies changed."""
        for row in rows:
            self._proxies[row.proxy_id] = row
        healthy: dict[str, list[str]] = {}
        for row in self._proxies.values():
            if row.active and row.status is not KeyStatus.NETWORK_ERROR:
                healthy.setdefault(row.provider, []).append(row.url)
        changed = healthy != self._healthy_proxies
        self._healthy_proxies = healthy
        return changed

    async def refresh(self) -> None:
        """`_refresh`, never beside another refresh or a reload's swap of the providers."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        """Pull what changed in the store since the last refresh into the pools (and the
        upstream model names the Keeper last fetched into the providers' models lists).

        When a provider's healthy proxies change, the whole snapshot is reloaded so that keys
        are re-bound to their proxies (local counters and cooldowns survive a reload).
        """
        assert self.store is not None
        if self._store_file_lost():
            return  # keep serving from the snapshot; reading the wrong file would undo it
        try:
            if self.readiness.revision == 0:
                revision = await self._load_everything()
            else:
                revision = await self._load_delta()
            await self._load_model_lists()
            await self._load_clients()
        except Exception as error:  # keep serving from the snapshot we have
            self.readiness.store_ok = False
            self.readiness.problem = (
                f"store unreachable at the last refresh: {type(error).__name__}"
            )
            log.warning("pool refresh failed: %s", type(error).__name__)
            return
        self.readiness.revision = revision
        self.readiness.store_ok = True
        self.readiness.pool_loaded = True
        self.readiness.last_refresh = self.clock()
        self.readiness.problem = ""
        guards = {name: provider.guard for name, provider in self.providers.items()}
        await self.board.exchange(self.store, guards, self.clock())

    async def _load_model_lists(self) -> None:
        """Take the upstream's model names the Keeper stored into the providers with a pattern
        entry (for their models lists): one small query of revisions, and the names of a
        provider only when its revision moved."""
        assert self.store is not None
        listing = [name for name, provider in self.providers.items() if provider.catalog.patterns]
        if not listing:
            return
        stored = await self.store.model_name_revisions()
        changed = [
            name
            for name in listing
            if name in stored and stored[name] != self._model_revisions.get(name)
        ]
        if not changed:
            return
        for name, (revision, names) in (await self.store.model_names(changed)).items():
            self.providers[name].list_models(names)
            self._model_revisions[name] = revision

    def _store_file_lost(self) -> bool:
        """Whether the store's SQLite file was deleted or replaced while in use: if so, `/readyz`
        says why (503) and a warning is logged once per change."""
        assert self.store is not None
        problem = self.store.file_problem()
        if problem != self._file_problem:
            self._file_problem = problem
            if problem is not None:
                log.warning("store: %s", problem)
        if problem is None:
            return False
        self.readiness.store_ok = False
        self.readiness.problem = problem
        return True

    async def _load_delta(self) -> int:
        """Apply what changed since the pool's revision, page by page (the gateway's own
        status writes come back here: 100,000 of them must not sit in memory at once);
        returns the revision it is current as of."""
        assert self.store is not None
        pages = self.store.snapshot_pages(since_revision=self.readiness.revision)
        revision, reload = self.readiness.revision, False
        async with contextlib.aclosing(pages):
            async for page in pages:
                if page.proxies and self._note_proxies(page.proxies):
                    reload = True  # healthy proxies changed: every key is bound anew
                    break
                self.apply_rows(page.keys)
                revision = page.revision
        return await self._load_everything() if reload else revision

    async def _load_everything(self) -> int:
        """Load the whole pool, `LOAD_PAGE` keys at a time (a large pool never sits in memory
        twice, as rows and as pool entries); returns the revision it is current as of."""
        assert self.store is not None
        top = await self.store.max_key_id()
        # one bit per key id seen, per provider: sets of 100,000 ids would leave the heap
        # fragmented long after the load (ids above `top` are newer than the load: kept)
        present = {name: bytearray((top >> 3) + 1) for name in self.providers}
        revision: int | None = None
        low = 0
        while revision is None or low < top:
            page = await self.store.snapshot(0, key_range=(low, low + LOAD_PAGE))
            if revision is None:  # the first page: the revision and every proxy
                revision = page.revision
                self._note_proxies(page.proxies)
            for row in page.keys:
                seen = present.get(row.provider)
                if seen is not None and row.key_id <= top:
                    seen[row.key_id >> 3] |= 1 << (row.key_id & 7)
            for start in range(0, len(page.keys), APPLY_CHUNK):
                self.apply_rows(page.keys[start : start + APPLY_CHUNK])
                await asyncio.sleep(0)  # requests (`/healthz`) get through between chunks
            low += LOAD_PAGE
        now = self.clock()
        for name, provider in self.providers.items():
            seen = present[name]
            gone = [
                key_id
                for key_id in provider.pool.key_ids()
                if key_id <= top and not seen[key_id >> 3] & (1 << (key_id & 7))
            ]
            if gone:
                provider.pool.apply((), gone, now)
        return revision

    async def stored_counts(self) -> list[StatusCount]:
        """The store's key counts by provider, model and status (for `llm_gateway_keys_total`,
        read by a background task: see `observe.store_counts`)."""
        assert self.store is not None
        return await self.store.status_counts()

    async def refresh_forever(self, wake: asyncio.Event | None = None) -> None:
        """Refresh every `refresh_interval_sec`, and at once when `wake` is set (store notices)."""
        wake = wake or asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.gateway.refresh_interval_sec)
            wake.clear()
            await self.refresh()


def create_app(
    settings: Settings,
    *,
    rng: random.Random | None = None,
    prepare: bool = True,
    metrics: Metrics | None = None,
    tune_process: bool = False,
    serve_early: bool = False,
    after_load: AfterLoad | None = None,
    log_secrets: Redactor | None = None,
    follow: Following | None = None,
    on_reload: Callable[[Settings], Awaitable[object]] | None = None,
) -> ASGIApp:
    """The gateway application. `prepare` applies migrations and runs one key-file sync at start
    (the `gateway` command sees to both before, and turns it off);
    `metrics` may be shared with a Keeper in the same process (`serve`). `tune_process`: the
    process is the gateway's own (the CLI's commands), so once started it may give freed memory
    back to the system and retune the garbage collector (`return_freed_memory`); an app embedded
    elsewhere (tests, another server) leaves its process alone.

    With `serve_early` the server listens while the pool loads from the store (`/healthz`
    answers, `/readyz` is 503 until the pool is loaded, a proxied request waits for it: see
    `router`); without it the pool is loaded before the server listens. `after_load` runs in
    the background once the pool is loaded (the start-up sync of the key files, while the pool
    serves the store's keys); when it returns, the pool is refreshed from the store at once.
    `log_secrets`: the redactor of the process's log lines, taught every key that joins the
    pool (when logging was set up without reading the key files). `follow`: the config file
    this process follows (`reloading`): a reload swaps the providers and the edge, requests in
    flight finish on what they started with; `on_reload` is handed each config applied (the
    Keeper of `serve` takes it)."""
    conductor = Conductor(settings, rng=rng or random.Random(), log_secrets=log_secrets)
    conductor.clients.quotas.use_zone(settings.usage.zone())
    conductor.accounting = settings.gateway.token_accounting
    metrics = metrics or Metrics.create()
    conductor.limits = Limits.create(settings, metrics, conductor.clock)
    if conductor.limits is not None:  # clients' limits are counted where keys' are
        conductor.clients.backend = conductor.limits.backend
    conductor.build_providers()
    for name, built in conductor.providers.items():
        metrics.for_provider(name, built.settings.models)
        built.guard.watch(metrics.for_provider(name).breaker)
    # the store's counts for `llm_gateway_keys_total`, read only where /metrics is served
    stored = StoreCounts(conductor.stored_counts) if metrics_served(settings.metrics) else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await Store.configured(settings.database)
        conductor.store = store
        if store.plan is not None:
            conductor.readiness.database = store.plan.describe()
            log.info("store: %s", conductor.readiness.database)
        writer = StatusWriter(store.apply_events)
        conductor.writer = writer
        usage = UsageWriter(functools.partial(usage_counts.record, store), conductor.clock)
        # always made (it costs nothing idle): a client with a quota turns the counting on
        tokens = TokenWriter(
            functools.partial(token_usage.record, store),
            metrics,
            clock=conductor.clock,
            quotas=conductor.clients.quotas,
        )
        conductor.tokens = tokens
        bodies = BodyBudget(settings.gateway.max_inflight_body_bytes)
        refusals = TokenRefusals(metrics.auth_failed)

        def make_edge(now: Settings) -> Edge:
            """The edge serving `now` with the Conductor's providers in force."""
            gateway = now.gateway
            attempt_loop = AttemptLoop(
                conductor.upstream,
                writer,
                conductor.rng,
                conductor.clock,
                metrics,
                max_response_bytes=gateway.max_response_bytes,
                usage=usage,
            )
            conductor.attempt_loop = attempt_loop  # `use_table` tells it whether to count
            body_limits = BodyLimits(gateway.max_body_bytes, gateway.client_body_timeout_sec)
            bodies.limit = gateway.max_inflight_body_bytes  # the bytes held stay counted
            access = AccessLog(now.logging.access, networks(gateway.trusted_proxies))
            table = route_table(now)
            conductor.use_table(table)
            routing = Routing(
                table, conductor.providers, conductor.rng, conductor.clock, conductor.clients
            )
            index = conductor.token_index()
            return Edge(attempt_loop, index, body_limits, bodies, access, refusals, routing)

        async def adopt(now: Settings, diff: ConfigDiff) -> None:
            """A config reload: the providers rebuilt, then a new edge for new requests."""
            reload_pool = any(name.startswith("providers") for name in diff.changed)
            await conductor.adopt(now, metrics, reload_pool=reload_pool)
            logging.getLogger().setLevel(now.logging.level)
            if on_reload is not None:
                await on_reload(now)
            if router.edge is not None:  # else the start-up's load puts the edge in place
                app.state.edge = edge = make_edge(now)
                router.open(edge)
                await conductor.read_quotas()  # of the quotas the config brought

        follower = None
        if follow is not None:
            follower = ConfigFollower(
                follow.path,
                settings,
                adopt,
                "gateway",
                metrics,
                follow.refusals,
                store.engine,
                on_warning=functools.partial(setattr, conductor.readiness, "config_warning"),
            )
        app.state.follower = follower
        tasks: list[asyncio.Task[None]] = []
        sighup = contextlib.ExitStack()
        wake = asyncio.Event()
        interval = settings.gateway.refresh_interval_sec
        on_config = None if follower is None else follower.notice.set
        app.state.listener = listener = follow_store(store, wake, interval, on_config)
        if listener is not None:
            conductor.readiness.listening = listener.listening

        def background(work: Coroutine[None, None, None], name: str) -> None:
            tasks.append(asyncio.create_task(work, name=name))

        async def load() -> None:
            """The pool from the store, then the edge in place and the background tasks."""
            conductor.use_table(route_table(conductor.settings))  # its quotas read at once
            with collector_paused() if tune_process else contextlib.nullcontext():
                await conductor.refresh()
            if tune_process:
                return_freed_memory()
            app.state.edge = edge = make_edge(conductor.settings)
            router.open(edge)
            background(writer.run(), "status-writer")
            background(usage.run(), "usage-writer")
            background(tokens.run(), "token-writer")
            background(conductor.refresh_forever(wake), "pool-refresh")
            if listener is not None:
                background(listener.run(), "store-notices")
            if metrics.multiprocess:
                background(metrics.flush_every(), "metrics-flush")
            if conductor.limits is not None:
                background(conductor.limits.run(), "key-limits")
            if follower is not None:
                await follower.report()
                background(follower.run(), "config-follower")
            if stored is not None:
                await stored.refresh()
                background(stored.follow(), "store-key-counts")

        async def then_refresh(work: AfterLoad) -> None:
            await work(store)
            wake.set()  # what it changed in the store reaches the pool now

        async def begin() -> None:
            try:
                await load()
                if after_load is not None:
                    await then_refresh(after_load)
            except Exception:  # a bug: said, not left for the shutdown to find
                log.exception("gateway start-up failed")

        try:
            if prepare:
                from llmgateway.keyfiles import run_sync  # only an embedded app syncs itself

                async with exclusive_start(store.engine.url):
                    await store.migrate(Adoption.of(settings.providers))
                    await run_sync(settings, store)
            if conductor.limits is not None:
                await conductor.limits.start()
            if follower is not None and follow is not None and follow.sighup:
                sighup.enter_context(follower.on_sighup())
            if serve_early:
                conductor.readiness.problem = "loading the key pool from the store"
                background(begin(), "start")
            else:
                await load()
                if after_load is not None:
                    background(then_refresh(after_load), "after-load")
            yield
        finally:
            sighup.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            refusals.close()
            within = settings.gateway.shutdown_drain_timeout_sec
            await asyncio.gather(writer.drain(within), usage.drain(within), tokens.drain(within))
            await conductor.upstream.close()
            if conductor.limits is not None:
                await conductor.limits.close()
            await store.close()
            metrics.process_exited()

    routes = admin_routes(conductor.readiness, conductor, conductor.clock, metrics, stored)
    admin = Starlette(routes=routes, lifespan=lifespan)
    admin.state.conductor = conductor
    admin.state.store_counts = stored
    router = Router(admin)
    return router
