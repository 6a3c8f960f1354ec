"""One probe round of the keys: claim the due (key, model) rows with leases, probe them by
provider and by key, write the results in batches, release what is left.

At most `worker.max_concurrent_providers` providers are probed at once. A provider's untested
keys get their first check (the models-list call, which spends no tokens and settles an invalid
key, then a generation probe when it passes) `first_check.concurrency` keys at once, at the
adaptive rate of `keeper.pacing` (a 429 cuts it and its Retry-After pauses the provider); their
results are written `WRITE_ROWS` at a time.
Keys already tested keep the original's pace: batches of `batch_size`, `batch_delay_sec` apart,
each batch written in one transaction. Running gateways see every write at their next refresh.

Each provider's part of the round ends at `task_timeout_sec` after the round began; a stop
(Ctrl-C, SIGTERM) starts no new probe and gives the ones in flight `STOP_GRACE_SEC`. Whatever a
round does not finish is released and stays due: nothing is lost. Progress is reported through
`on_progress` at every 10 % and at least every `worker.progress_interval_sec`
(`keeper.reporting.ProgressGate`). Schedules come from the injected `clock`, the pace from
`ticker` (monotonic) and `sleep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from llmgateway.config.settings import ProviderSettings, Settings
from llmgateway.core.egress import NoHealthyProxyError, egress_for
from llmgateway.core.outcomes import Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.keeper.pacing import AdaptiveRate
from llmgateway.keeper.prober import Exchange, send
from llmgateway.keeper.probes import Kind, RowState, auth_probe_decides, judge, wants_auth_probe
from llmgateway.keeper.reporting import ProgressGate
from llmgateway.keeper.summary import Progress, RoundSummary, Tally
from llmgateway.observe.masking import fingerprint
from llmgateway.observe.metrics import Metrics
from llmgateway.providers import auth_probe_request, probe_request
from llmgateway.store import Store, proxy_checks
from llmgateway.store import probes as queries
from llmgateway.store.probes import DueCheck, ProbeResult
from llmgateway.transport.upstream import Upstream

log = logging.getLogger("llmgateway.keeper")

WRITE_ROWS = 500
"""First-check results written per transaction."""
STOP_GRACE_SEC = 5.0
"""After a stop, how long the probes in flight may take before they are abandoned."""
_THROTTLING = frozenset(
    {ErrorReason.RATE_LIMITED, ErrorReason.OVERLOADED, ErrorReason.SERVICE_UNAVAILABLE}
)


@dataclass(slots=True)
class _Shared:
    """What every provider's part of one round shares."""

    tally: Tally
    proxies: Mapping[str, list[str]]
    stop: asyncio.Event | None
    deadlines: dict[str, float]  # the event loop's time at which a provider's part ends
    cut: set[str] = field(default_factory=set)  # providers whose part ran out of time
    rates: dict[str, AdaptiveRate] = field(default_factory=dict)

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


@dataclass(slots=True)
class KeyRound:
    """What a probe round works with: the Keeper's settings, store, upstream, lease owner,
    metrics and time; `run()` is one round."""

    settings: Settings
    store: Store
    upstream: Upstream
    owner: str
    metrics: Metrics
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    on_progress: Callable[[Progress], None]
    claim_size: int
    ticker: Callable[[], float] = time.monotonic
    _gate: ProgressGate | None = None
    _started: float = 0.0

    async def run(self, stop: asyncio.Event | None = None) -> RoundSummary:
        """Probe every row due now, once. With `stop` set, no new probe starts; the rows not
        probed are released and stay due."""
        self._started = started = time.perf_counter()
        self._gate = ProgressGate(self.settings.worker.progress_interval_sec, started)
        now = self.clock()
        tally = Tally(due=await queries.count_due(self.store, now))
        loop = asyncio.get_running_loop()
        shared = _Shared(
            tally,
            await proxy_checks.healthy_proxies(self.store),
            stop,
            {
                name: loop.time() + p.worker_health_policy.task_timeout_sec
                for name, p in self.settings.providers.items()
            },
        )
        work = asyncio.create_task(self._claims(now, shared))
        ticking = asyncio.create_task(self._tick(tally))
        try:
            await self._until_done(work, stop)
        finally:
            ticking.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            await asyncio.shield(queries.release_leases(self.store, self.owner))
        kinds = tally.kinds
        return RoundSummary(
            due=tally.due,
            healthy=kinds[Kind.HEALTHY],
            failed=kinds[Kind.FAILED],
            verifying=kinds[Kind.VERIFYING],
            egress=kinds[Kind.EGRESS],
            requests=tally.requests,
            writes=tally.writes,
            timed_out=len(shared.cut),
            seconds=time.perf_counter() - started,
            stopped=shared.stopping,
        )

    async def _until_done(self, work: asyncio.Task[None], stop: asyncio.Event | None) -> None:
        """Wait for the round; after a stop, for its probes in flight up to STOP_GRACE_SEC."""
        if stop is not None:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not work.done():
                await asyncio.wait({work}, timeout=STOP_GRACE_SEC)
                if not work.done():
                    return  # abandoned: cancelled by run()
        await work

    async def _claims(self, now: float, shared: _Shared) -> None:
        while not shared.stopping:
            lease_until = now + self._lease_sec()
            claimed = await queries.claim_due(
                self.store, self.owner, now, lease_until, self.claim_size, skip=shared.cut
            )
            if not claimed:
                break
            await self._probe_claimed(claimed, shared)

    async def _tick(self, tally: Tally) -> None:
        """Report the progress on time even while no batch ends (a long pause, slow probes)."""
        every = min(self.settings.worker.progress_interval_sec, 1.0)
        while True:
            await asyncio.sleep(every)
            self._report(tally)

    def _report(self, tally: Tally) -> None:
        now = time.perf_counter()
        progress = tally.progress(now - self._started)
        if self._gate is not None and self._gate.due(progress, now):
            self.on_progress(progress)

    def _lease_sec(self) -> float:
        timeouts = [
            p.worker_health_policy.task_timeout_sec for p in self.settings.providers.values()
        ]
        return max(timeouts, default=900) + 60.0

    async def _probe_claimed(self, claimed: Sequence[DueCheck], shared: _Shared) -> None:
        by_provider: dict[str, dict[int, list[DueCheck]]] = {}
        for check in claimed:
            by_provider.setdefault(check.provider, {}).setdefault(check.key_id, []).append(check)
        gate = asyncio.Semaphore(self.settings.worker.max_concurrent_providers)
        async with asyncio.TaskGroup() as group:
            for name, by_key in by_provider.items():
                provider = self.settings.providers.get(name)
                if provider is None or name in shared.cut:  # released at the end: stays due
                    continue
                work = self._provider_round(name, provider, list(by_key.values()), shared)
                group.create_task(_gated(gate, work))

    async def _provider_round(
        self, name: str, provider: ProviderSettings, keys: list[list[DueCheck]], shared: _Shared
    ) -> None:
        fresh = [rows for rows in keys if all(r.status is KeyStatus.UNTESTED for r in rows)]
        tested = [rows for rows in keys if any(r.status is not KeyStatus.UNTESTED for r in rows)]
        pending: list[ProbeResult] = []
        try:
            async with asyncio.timeout_at(shared.deadlines[name]):
                async with asyncio.TaskGroup() as group:
                    if fresh:
                        first = self._first_checks(name, provider, fresh, shared, pending)
                        group.create_task(first)
                    if tested:
                        group.create_task(self._paced(name, provider, tested, shared))
        except TimeoutError:
            if name not in shared.cut:
                shared.cut.add(name)
                log.warning(
                    "provider %s: probe round cut after task_timeout_sec=%s; the rest stays due",
                    name,
                    provider.worker_health_policy.task_timeout_sec,
                )
        await self._write(pending, shared.tally)  # what was judged before the cut

    async def _first_checks(
        self,
        name: str,
        provider: ProviderSettings,
        keys: list[list[DueCheck]],
        shared: _Shared,
        pending: list[ProbeResult],
    ) -> None:
        """Untested keys: each its first check (`_probe_key`: the models-list call, then a
        generation probe when that passes), `first_check.concurrency` keys at once at the
        provider's adaptive rate; results written WRITE_ROWS at a time."""
        policy = provider.worker_health_policy.first_check
        rate = shared.rates.get(name)
        if rate is None:
            rate = shared.rates[name] = AdaptiveRate(policy)
        todo = iter(keys)
        writing = asyncio.Lock()
        proxies = shared.proxies.get(name, [])

        async def check_keys() -> None:
            for rows in _taken(todo, shared):
                await self._slot(rate)
                if shared.stopping:
                    return
                pending.extend(await self._probe_key(provider, rows, proxies, shared.tally, rate))
                if len(pending) >= WRITE_ROWS:
                    async with writing:
                        await self._write(pending, shared.tally)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(policy.concurrency, len(keys))):
                group.create_task(check_keys())

    async def _slot(self, rate: AdaptiveRate) -> None:
        while (wait := rate.wait(self.ticker())) > 0:
            await self.sleep(wait)

    async def _write(self, pending: list[ProbeResult], tally: Tally) -> None:
        """Write (and take out of `pending`) the results gathered so far, in one transaction."""
        if not pending:
            return
        batch = pending[:]
        del pending[:]
        await queries.write_results(self.store, self.owner, batch)
        tally.writes += 1
        self._report(tally)

    async def _paced(
        self,
        name: str,
        provider: ProviderSettings,
        keys: list[list[DueCheck]],
        shared: _Shared,
    ) -> None:
        """Keys already tested, at the original's pace: `batch_size` keys at once, each batch
        written in one transaction, `batch_delay_sec` between batches."""
        policy = provider.worker_health_policy
        proxies = shared.proxies.get(name, [])
        for start in range(0, len(keys), policy.batch_size):
            if start and policy.batch_delay_sec:
                await self._pause(policy.batch_delay_sec, shared.stop)
            if shared.stopping:
                return
            batch = keys[start : start + policy.batch_size]
            found = await asyncio.gather(
                *(self._probe_key(provider, rows, proxies, shared.tally) for rows in batch)
            )
            results = [result for key_results in found for result in key_results]
            await self._write(results, shared.tally)

    async def _pause(self, seconds: float, stop: asyncio.Event | None) -> None:
        """Sleep between batches; a stop cuts the pause short."""
        if stop is None:
            await self.sleep(seconds)
            return
        waits = [asyncio.ensure_future(self.sleep(seconds)), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _probe_key(
        self,
        provider: ProviderSettings,
        rows: list[DueCheck],
        proxies: list[str],
        tally: Tally,
        rate: AdaptiveRate | None = None,
    ) -> list[ProbeResult]:
        """Probe one key's due rows: the auth probe first where it can decide, then one
        generation probe per row (one per key under shared_key_status). With a `rate`, every
        answer adapts it, and a throttled auth probe is the verdict (no second call into a 429)."""
        secret = rows[0].secret
        try:
            egress = egress_for(provider, secret, proxies)
        except NoHealthyProxyError as exc:
            return self._egress_fault(provider, rows, exc, tally)
        if any(wants_auth_probe(row.status) for row in rows):
            observed = self.clock()
            request = auth_probe_request(provider, secret)
            exchange = await send(self.upstream, provider, request, egress, secret, observed)
            tally.requests += 1
            throttled = self._adapt(rate, exchange.outcome)
            if throttled or auth_probe_decides(exchange.outcome):
                return [self._result(provider, row, exchange, observed, tally) for row in rows]
        results = []
        for row in rows:
            observed = self.clock()
            request = probe_request(provider, row.model, secret)
            exchange = await send(self.upstream, provider, request, egress, secret, observed)
            tally.requests += 1
            self._adapt(rate, exchange.outcome)
            results.append(self._result(provider, row, exchange, observed, tally))
        return results

    def _adapt(self, rate: AdaptiveRate | None, outcome: Outcome) -> bool:
        """Tell `rate` how an answer went; True when it was throttling (429, 503)."""
        if rate is None:
            return False
        if outcome.reason in _THROTTLING:
            rate.throttled(self.ticker(), outcome.retry_after)
            return True
        if outcome.blame is not Blame.EGRESS:
            rate.passed()
        return False

    def _egress_fault(
        self,
        provider: ProviderSettings,
        rows: list[DueCheck],
        exc: NoHealthyProxyError,
        tally: Tally,
    ) -> list[ProbeResult]:
        outcome = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
        exchange = Exchange(outcome, 0.0, str(exc))
        return [self._result(provider, row, exchange, self.clock(), tally) for row in rows]

    def _result(
        self,
        provider: ProviderSettings,
        row: DueCheck,
        exchange: Exchange,
        observed: float,
        tally: Tally,
    ) -> ProbeResult:
        state = RowState(row.status, row.failing_since, row.next_check_at, row.attempts)
        verdict = judge(
            state,
            exchange.outcome,
            provider.worker_health_policy,
            observed,
            self.settings.worker.egress_retry_sec,
        )
        tally.kinds[verdict.kind] += 1
        self.metrics.probe(row.provider, verdict.kind.value, exchange.latency_ms / 1000)
        if verdict.kind is not Kind.HEALTHY:
            log.debug(
                "key %s model %s: %s (%s)",
                fingerprint(row.secret),
                row.model,
                verdict.kind,
                exchange.error_message,
            )
        return ProbeResult(
            key_id=row.key_id,
            model=row.model,
            observed_at=observed,
            marks=verdict.marks,
            status=verdict.status,
            reason=verdict.reason,
            failing_since=verdict.failing_since,
            next_check_at=verdict.next_check_at,
            attempts=verdict.attempts,
            cooldown_until=verdict.cooldown_until,
            status_code=exchange.outcome.status,
            latency_ms=exchange.latency_ms,
            error_message=exchange.error_message,
        )


async def _gated(gate: asyncio.Semaphore, work: Awaitable[None]) -> None:
    async with gate:
        await work


def _taken(todo: Iterator[list[DueCheck]], shared: _Shared) -> Iterator[list[DueCheck]]:
    """The keys left, one at a time to whichever first-check worker asks, until a stop."""
    for rows in todo:
        if shared.stopping:
            return
        yield rows
