"""`llmgateway worker`: the Keeper, as a long run or one round (`--once`)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, run_with_store, setup_logging
from llmgateway.cli.store import echo_sync
from llmgateway.cli.tokens import TokenCheck, admin_hosts, guard_tokens, metrics_hosts

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
    help=(
        "One sync, the bulk jobs submitted, one probe round and the maintenance of everything "
        "due, then exit."
    ),
)
def worker(config: str | None, once: bool) -> None:
    """The Keeper: sync the key and proxy files, probe keys and proxies, maintain the store.

    SIGHUP (and a changed file under gateway.watch_config, and `llmgateway reload`) re-reads
    the config file: the Keeper finishes the probes in flight and goes on with the new one.

    Runs until Ctrl-C or SIGTERM (a second signal abandons in-flight probes at once; leases
    are released either way). With --once, Ctrl-C ends the probe round early, prints what was
    done so far and exits 130. On SQLite only one keeper may run.
    """
    from llmgateway.config.load import config_path
    from llmgateway.keeper.run import run_once
    from llmgateway.reloading import Following
    from llmgateway.store.locks import KeeperRunningError

    if not once:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the Keeper follows its config
    settings = load(config, logs=not once)
    # --once prints its own summary, problems included; the loop reports through the logs
    setup_logging(settings, "worker", "ERROR" if once else None)
    gateway_host = settings.gateway.host  # the listener this config's gateway tokens guard
    keeper_hosts = metrics_hosts(settings, gateway_host, keeper=True)
    consoles = () if once else admin_hosts(settings)
    guard_tokens(settings, gateway_host, keeper_hosts, consoles)
    follow = Following(config_path(config), TokenCheck(gateway_host, keeper_hosts, consoles))

    async def work(store: Store) -> None:
        from llmgateway.console.listener import keeper_http
        from llmgateway.observe.metrics import Metrics

        try:
            stop = asyncio.Event()
            _stop_on_signals(stop, notice=once)
            if once:
                click.echo("syncing the key files, then one probe round…", err=True)
                done = await run_once(
                    settings,
                    store,
                    on_progress=_echo_progress,
                    on_sync=echo_sync,
                    stop=stop,
                )
                if done.jobs:
                    click.echo(f"bulk jobs: {done.jobs} run to their end")
                _echo_round(done.proxies, done.round)
                if done.stopped:
                    raise SystemExit(INTERRUPTED)
                _echo_maintenance(done.maintenance)
                counts = await store.status_counts()
                if counts:
                    from llmgateway.cli.render import status_table

                    click.echo(status_table(counts, time.time()))
                return
            from llmgateway.keeper.following import run_following

            metrics = Metrics.create()
            async with keeper_http(settings, metrics, store):
                await run_following(settings, store, metrics, stop, follow)
            click.echo("worker stopped")
        except KeeperRunningError as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(1) from None

    try:
        run_with_store(settings, work)
    except asyncio.CancelledError:
        click.echo("worker stopped (in-flight probes abandoned, leases released)")
        if once:
            raise SystemExit(INTERRUPTED) from None


INTERRUPTED = 130
"""`worker --once`'s exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def _stop_on_signals(stop: asyncio.Event, *, notice: bool) -> None:
    """SIGINT and SIGTERM set `stop`; a second one abandons the probes in flight at once."""
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            main_task.cancel()  # a second signal: abandon in-flight probes now
        elif notice:
            click.echo(
                "stopping: finishing the probes in flight (Ctrl-C again: abandon them)…", err=True
            )
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)


def _echo_progress(progress: Progress) -> None:
    from llmgateway.keeper.reporting import describe_progress

    click.echo(f"  {describe_progress(progress)}", err=True)


def _echo_round(proxies: ProxySummary, summary: RoundSummary) -> None:
    from llmgateway.keeper.reporting import describe_round

    if proxies.alive or proxies.dead:
        click.echo(f"proxies: {proxies.alive} alive, {proxies.dead} dead")
    click.echo(describe_round(summary))


def _echo_maintenance(done: MaintenanceSummary) -> None:
    ran = []
    if done.purged:
        ran.append(f"purge ({done.purged_keys} keys, {done.purged_proxies} proxies deleted)")
    if done.vacuumed:
        ran.append("vacuum")
    click.echo(f"maintenance: {', '.join(ran) if ran else 'nothing due'}")
