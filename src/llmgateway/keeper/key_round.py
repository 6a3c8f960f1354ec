"""One probe round of the keys: claim the due (key, model) rows with leases, probe them by
provider and by key, write each batch's results, release what is left.

At most `worker.max_concurrent_providers` providers are probed at once, each under its
`task_timeout_sec`; a provider's keys go in batches of `batch_size`, `batch_delay_sec` apart.
Each batch's results are written in one transaction, so running gateways see them at their next
refresh. Whatever a round does not finish (stopped, timed out, cancelled) is released and stays
due: nothing is lost. Time comes from the injected `clock` and `sleep`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from llmgateway.config.settings import ProviderSettings, Settings
from llmgateway.core.egress import NoHealthyProxyError, egress_for
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.keeper.prober import Exchange, send
from llmgateway.keeper.probes import Kind, RowState, auth_probe_decides, judge, wants_auth_probe
from llmgateway.keeper.summary import Progress, RoundSummary, Tally
from llmgateway.observe.masking import fingerprint
from llmgateway.observe.metrics import Metrics
from llmgateway.providers import auth_probe_request, probe_request
from llmgateway.store import Store, proxy_checks
from llmgateway.store import probes as queries
from llmgateway.store.probes import DueCheck, ProbeResult
from llmgateway.transport.upstream import Upstream

log = logging.getLogger("llmgateway.keeper")


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

    async def run(self, stop: asyncio.Event | None = None) -> RoundSummary:
        """Probe every row due now, once. With `stop` set, no new batch starts; the rows not
        probed are released and stay due."""
        started = time.perf_counter()
        now = self.clock()
        tally = Tally(due=await queries.count_due(self.store, now))
        proxies = await proxy_checks.healthy_proxies(self.store)
        try:
            while stop is None or not stop.is_set():
                lease_until = now + self._lease_sec()
                claimed = await queries.claim_due(
                    self.store, self.owner, now, lease_until, self.claim_size
                )
                if not claimed:
                    break
                await self._probe_claimed(claimed, proxies, tally, stop)
        finally:
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
            timed_out=tally.timed_out,
            seconds=time.perf_counter() - started,
        )

    def _lease_sec(self) -> float:
        timeouts = [
            p.worker_health_policy.task_timeout_sec for p in self.settings.providers.values()
        ]
        return max(timeouts, default=900) + 60.0

    async def _probe_claimed(
        self,
        claimed: Sequence[DueCheck],
        proxies: Mapping[str, list[str]],
        tally: Tally,
        stop: asyncio.Event | None,
    ) -> None:
        by_provider: dict[str, dict[int, list[DueCheck]]] = {}
        for check in claimed:
            by_provider.setdefault(check.provider, {}).setdefault(check.key_id, []).append(check)
        gate = asyncio.Semaphore(self.settings.worker.max_concurrent_providers)
        async with asyncio.TaskGroup() as group:
            for name, by_key in by_provider.items():
                provider = self.settings.providers.get(name)
                if provider is None:  # left the config since the last sync: released at the end
                    continue
                healthy = proxies.get(name, [])
                work = self._provider_round(
                    name, provider, list(by_key.values()), healthy, tally, stop
                )
                group.create_task(_gated(gate, work))

    async def _provider_round(
        self,
        name: str,
        provider: ProviderSettings,
        keys: list[list[DueCheck]],
        proxies: list[str],
        tally: Tally,
        stop: asyncio.Event | None,
    ) -> None:
        policy = provider.worker_health_policy
        try:
            async with asyncio.timeout(policy.task_timeout_sec):
                for start in range(0, len(keys), policy.batch_size):
                    if start and policy.batch_delay_sec:
                        await self._pause(policy.batch_delay_sec, stop)
                    if stop is not None and stop.is_set():
                        return
                    batch = keys[start : start + policy.batch_size]
                    found = await asyncio.gather(
                        *(self._probe_key(provider, rows, proxies, tally) for rows in batch)
                    )
                    results = [result for key_results in found for result in key_results]
                    await queries.write_results(self.store, self.owner, results)
                    tally.writes += 1
                    self.on_progress(Progress(tally.done, tally.due))
        except TimeoutError:
            tally.timed_out += 1
            log.warning(
                "provider %s: probe round cut after task_timeout_sec=%s; the rest stays due",
                name,
                policy.task_timeout_sec,
            )

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
    ) -> list[ProbeResult]:
        """Probe one key's due rows: the auth probe first where it can decide, then one
        generation probe per row (one per key under shared_key_status)."""
        secret = rows[0].secret
        try:
            egress = egress_for(provider, secret, proxies)
        except NoHealthyProxyError as exc:
            outcome = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
            exchange = Exchange(outcome, 0.0, str(exc))
            return [self._result(provider, row, exchange, self.clock(), tally) for row in rows]
        if any(wants_auth_probe(row.status) for row in rows):
            observed = self.clock()
            request = auth_probe_request(provider, secret)
            exchange = await send(self.upstream, provider, request, egress, secret, observed)
            tally.requests += 1
            if auth_probe_decides(exchange.outcome):
                return [self._result(provider, row, exchange, observed, tally) for row in rows]
        results = []
        for row in rows:
            observed = self.clock()
            request = probe_request(provider, row.model, secret)
            exchange = await send(self.upstream, provider, request, egress, secret, observed)
            tally.requests += 1
            results.append(self._result(provider, row, exchange, observed, tally))
        return results

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
