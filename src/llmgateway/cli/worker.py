"""`llmgateway worker`: the Keeper, as a long run or one round (`--once`)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, run_with_store, setup_logging
from llmgateway.cli.store import echo_sync
from llmgateway.cli.tokens import guard_tokens, metrics_hosts

if TYPE_CHECKING:
    from llmgateway.keeper.summary import (
        MaintenanceSummary,
        Progress,
        ProxySummary,
        RoundSummary,
    )
    from llmgateway.store import Store


@click.command()
@config_option
@click.option(
    "--once",
    is_flag=True,
    help="One sync, one probe round and the maintenance of everything due, then exit.",
)
def worker(config: str | None, once: bool) -> None:
    """The Keeper: sync the key and proxy files, probe keys and proxies, maintain the store.

    Runs until Ctrl-C or SIGTERM (a second signal abandons in-flight probes at once; leases
    are released either way). On SQLite only one keeper may run.
    """
    from llmgateway.keeper.run import Keeper, run_once
    from llmgateway.store.locks import KeeperRunningError

    settings = load(config, logs=not once)
    # --once prints its own summary, problems included; the loop reports through the logs
    setup_logging(settings, "worker", "ERROR" if once else None)
    gateway_host = settings.gateway.host  # the listener this config's gateway tokens guard
    guard_tokens(settings, gateway_host, metrics_hosts(settings, gateway_host, keeper=True))

    async def work(store: Store) -> None:
        from llmgateway.observe.metrics import Metrics
        from llmgateway.observe.metrics_http import keeper_metrics

        try:
            if once:
                click.echo("syncing the key files, then one probe round…", err=True)
                done = await run_once(settings, store, on_progress=_progress_printer())
                echo_sync(done.sync)
                _echo_round(done.proxies, done.round)
                _echo_maintenance(done.maintenance)
                counts = await store.status_counts()
                if counts:
                    from llmgateway.cli.render import status_table

                    click.echo(status_table(counts, time.time()))
                return
            stop = asyncio.Event()
            main_task = asyncio.current_task()
            loop = asyncio.get_running_loop()

            def on_signal() -> None:
                if stop.is_set() and main_task is not None:
                    main_task.cancel()  # a second signal: abandon in-flight probes now
                stop.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal)
            metrics = Metrics.create()
            async with keeper_metrics(settings, metrics, store):
                await Keeper(settings, store, metrics=metrics).run(stop)
            click.echo("worker stopped")
        except KeeperRunningError as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(1) from None

    try:
        run_with_store(settings, work)
    except asyncio.CancelledError:
        click.echo("worker stopped (in-flight probes abandoned, leases released)")


def _progress_printer() -> Callable[[Progress], None]:
    """Prints a long round's progress every 10% (rounds of 500 rows or more)."""
    shown = [0]

    def show(progress: Progress) -> None:
        if progress.due < 500:
            return
        step = progress.done * 10 // progress.due
        if step > shown[0]:
            shown[0] = step
            click.echo(f"  probed {progress.done}/{progress.due}", err=True)

    return show


def _echo_round(proxies: ProxySummary, summary: RoundSummary) -> None:
    if proxies.alive or proxies.dead:
        click.echo(f"proxies: {proxies.alive} alive, {proxies.dead} dead")
    line = f"probe round: {summary.due} due, {summary.healthy} healthy, {summary.failed} failed"
    line += f", {summary.verifying} verifying, {summary.egress} egress faults"
    line += f" ({summary.requests} requests, {summary.seconds:.1f} s)"
    click.echo(line)


def _echo_maintenance(done: MaintenanceSummary) -> None:
    ran = []
    if done.purged:
        ran.append(f"purge ({done.purged_keys} keys, {done.purged_proxies} proxies deleted)")
    if done.vacuumed:
        ran.append("vacuum")
    click.echo(f"maintenance: {', '.join(ran) if ran else 'nothing due'}")
