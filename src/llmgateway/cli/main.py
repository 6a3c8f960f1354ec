"""The `llmgateway` command line (also `python -m llmgateway`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from llmgateway import __version__

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.keeper.summary import Progress, ProxySummary, RoundSummary
    from llmgateway.keyfiles import SyncReport
    from llmgateway.store import StatusCount, Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmgateway")
def main() -> None:
    """llmgateway: one reliable endpoint in front of many unstable LLM provider keys.

    The config file is --config, else $LLMGATEWAY_CONFIG, else config/providers.yaml.
    """


@main.command("check-config")
@click.argument("path", required=False)
def check_config(path: str | None) -> None:
    """Validate the config file; exit 0, or exit 2 listing every problem (secrets masked)."""
    from llmgateway.config.load import ConfigError, config_path, load_settings

    target = config_path(path)
    try:
        settings = load_settings(target)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(2) from None
    except Exception as exc:  # never a traceback; the message may hold secrets, so omit it
        click.echo(f"{target}: could not check the config ({type(exc).__name__})", err=True)
        raise SystemExit(2) from None
    count, names = len(settings.providers), ", ".join(settings.providers)
    noun = "provider" if count == 1 else "providers"
    summary = f"ok: {count} {noun} ({names}), database: {settings.database.backend}"
    if any(p.gateway_policy.key_limits.enabled for p in settings.providers.values()):
        from llmgateway.limits import backend_of

        summary += f", per-key limits counted by: {backend_of(settings).value}"
    click.echo(summary)
    from llmgateway.config.rules import unreachable_models, weak_tokens

    if not settings.gateway.allow_weak_tokens:
        for where, why in weak_tokens(settings):
            click.echo(f"warning: {where}: {why}, refused off loopback; {_WAY_OUT}", err=True)
    for where, why in unreachable_models(settings):
        click.echo(f"warning: {where}: {why}", err=True)


@main.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8900, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--chunks", default=3, show_default=True, type=click.IntRange(1), help="Events per stream."
)
@click.option(
    "--chunk-delay-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Pause between streamed events.",
)
def fake_upstream(host: str, port: int, chunks: int, chunk_delay_ms: float) -> None:
    """Run the fake LLM provider (OpenAI and Gemini shapes, faults by key name) until Ctrl-C."""
    import asyncio

    from llmgateway.testing.fake_upstream import serve

    try:
        asyncio.run(serve(host, port, chunks, chunk_delay_ms / 1000, announce=click.echo))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        click.echo(
            f"fake-upstream: cannot listen on {host}:{port}: {reason}; try another --port", err=True
        )
        raise SystemExit(2) from None


# -- weak tokens ---------------------------------------------------------------------------------

_WAY_OUT = (
    "set a long random token: python -c 'import secrets; print(secrets.token_urlsafe(32))', "
    "or set gateway.allow_weak_tokens: true to accept it on purpose"
)


def _guard_tokens(settings: Settings, gateway_host: str, metrics_hosts: tuple[str, ...]) -> None:
    """Refuse to start (exit 2, one line per token) when a placeholder or short token guards a
    listener off loopback; on loopback warn and go on. Gateway tokens guard `gateway_host`, the
    metrics token each of `metrics_hosts`. Token values are never shown."""
    import logging

    from llmgateway.config.rules import is_loopback, weak_tokens

    weak = weak_tokens(settings)
    log = logging.getLogger("llmgateway.tokens")
    if not weak:
        return
    if settings.gateway.allow_weak_tokens:
        paths = ", ".join(where for where, _ in weak)
        log.info("gateway.allow_weak_tokens: weak tokens accepted on purpose (%s)", paths)
        return
    refused = []
    for where, why in weak:
        hosts = metrics_hosts if where.startswith("metrics.") else (gateway_host,)
        public = [host for host in hosts if not is_loopback(host)]
        if public:
            listener = f"it guards {public[0]}, which is not loopback"
            refused.append(f"{where}: {why}; {listener}: refusing to start")
        else:
            log.warning("%s: %s, accepted on loopback only; %s", where, why, _WAY_OUT)
    for line in refused:
        click.echo(f"{line}; {_WAY_OUT}", err=True)
    if refused:
        raise SystemExit(2)


def _metrics_hosts(settings: Settings, gateway_host: str, keeper: bool) -> tuple[str, ...]:
    """Where the metrics token guards something: the gateway's listener (`/metrics`, the
    `/readyz` details) and, for a command running the Keeper, its own metrics listener."""
    worker = settings.worker
    if keeper and settings.metrics.enabled and worker.metrics_port != 0:
        return (gateway_host, worker.metrics_host)
    return (gateway_host,)


# -- the store: db upgrade, worker, status ------------------------------------------------------

_config_option = click.option(
    "--config",
    "config",
    metavar="PATH",
    help="Config file (default: $LLMGATEWAY_CONFIG, else config/providers.yaml).",
)


def _load(config: str | None) -> Settings:
    """The settings, or exit 2 listing every problem (no traceback)."""
    from llmgateway.config.load import ConfigError, config_path, load_settings

    target = config_path(config)
    try:
        return load_settings(target)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(2) from None


def _run_with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    """Open the store, migrate it, run `work`; a database failure exits 1 with one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmgateway.store import DatabaseUrlError, Store, masked_url

    url = settings.database.async_url

    async def run() -> None:
        async with await Store.open(url, settings.database.pool_size) as store:
            await store.upgrade()
            await work(store)

    try:
        asyncio.run(run())
    except DatabaseUrlError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        why = (getattr(cause, "strerror", None) or str(cause)).splitlines()[0][:200]
        click.echo(
            f"cannot use the database at {masked_url(url)}: {type(cause).__name__}: {why}",
            err=True,
        )
        raise SystemExit(1) from None


@main.group()
def db() -> None:
    """The database (SQLite by default, PostgreSQL for production)."""


@db.command("upgrade")
@_config_option
@click.option("--sync", is_flag=True, help="Then run one sync of the key and proxy files.")
def db_upgrade(config: str | None, sync: bool) -> None:
    """Apply the database migrations (the gateway and worker also do it at start)."""
    from llmgateway.conductor.coherence import exclusive_start
    from llmgateway.keyfiles import run_sync
    from llmgateway.store import masked_url

    settings = _load(config)
    if sync:
        _setup_logging(settings, "prepare")

    async def work(store: Store) -> None:
        click.echo(f"{masked_url(settings.database.async_url)}: schema up to date")
        if sync:
            async with exclusive_start(store.engine.url):
                _echo_sync(await run_sync(settings, store))

    _run_with_store(settings, work)


def _prepare_store(config: str | None) -> None:
    """Migrations and one file sync in a child process, so that the gateway never loads what
    only they need (Alembic, the parsed key files): its resident memory stays small."""
    import subprocess
    import sys

    from llmgateway.config.load import config_path

    command = [sys.executable, "-m", "llmgateway", "db", "upgrade", "--sync"]
    done = subprocess.run([*command, "--config", str(config_path(config))], check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(done.returncode)


@main.command()
@_config_option
@click.option(
    "--once", is_flag=True, help="One sync and one probe round of everything due, then exit."
)
def worker(config: str | None, once: bool) -> None:
    """The Keeper: sync the key and proxy files, probe keys and proxies, maintain the store.

    Runs until Ctrl-C or SIGTERM (a second signal abandons in-flight probes at once; leases
    are released either way). On SQLite only one keeper may run.
    """
    from llmgateway.keeper.run import Keeper, run_once
    from llmgateway.store.locks import KeeperRunningError

    settings = _load(config)
    # --once prints its own summary, problems included; the loop reports through the logs
    _setup_logging(settings, "worker", "ERROR" if once else None)
    gateway_host = settings.gateway.host  # the listener this config's gateway tokens guard
    _guard_tokens(settings, gateway_host, _metrics_hosts(settings, gateway_host, keeper=True))

    async def work(store: Store) -> None:
        from llmgateway.observe.metrics import Metrics
        from llmgateway.observe.metrics_http import keeper_metrics

        try:
            if once:
                click.echo("syncing the key files, then one probe round…", err=True)
                report, proxies, summary = await run_once(
                    settings, store, on_progress=_progress_printer()
                )
                _echo_sync(report)
                _echo_round(proxies, summary)
                counts = await store.status_counts()
                if counts:
                    click.echo(_status_table(counts, time.time()))
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
        _run_with_store(settings, work)
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


def _echo_sync(report: SyncReport) -> None:
    for result in report.providers:
        if result.keys is None:
            click.echo(f"{result.provider}: disabled, not synced")
            continue
        k = result.keys
        line = f"{result.provider}: keys +{k.added} added, -{k.removed} removed, "
        line += f"{k.restored} restored, {k.active} active"
        if (p := result.proxies) is not None:
            line += f"; proxies +{p.added} -{p.removed} ~{p.restored}, {p.active} active"
        if not result.complete:
            line += " (some files unreadable: nothing removed)"
        click.echo(line)
        for problem in result.problems:
            click.echo(f"  {problem}")


@main.command()
@_config_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (keys, breakers, proxies) instead."
)
def status(config: str | None, as_json: bool) -> None:
    """The pool as a table: provider, model, status, count, next check.

    `shared` in the model column: one status for all models (shared_key_status).
    """
    from llmgateway.cli.render import breaker_table, proxy_table
    from llmgateway.store.report import proxy_counts

    settings = _load(config)

    async def work(store: Store) -> None:
        counts = await store.status_counts()
        breakers = await store.breakers()
        proxy_rows = await proxy_counts(store)
        if as_json:
            report = {
                "keys": [dataclasses.asdict(c) for c in counts],
                "breakers": [dataclasses.asdict(b) for b in breakers],
                "proxies": [dataclasses.asdict(p) for p in proxy_rows],
            }
            click.echo(json.dumps(report, indent=2))
            return
        if not counts:
            click.echo("no keys in the store yet (`llmgateway worker --once` syncs the files)")
        else:
            click.echo(_status_table(counts, time.time()))
        if breakers:
            click.echo("\n" + breaker_table(breakers, time.time()))
        if proxy_rows:
            click.echo("\n" + proxy_table(proxy_rows))

    _run_with_store(settings, work)


@main.group()
def breaker() -> None:
    """Circuit breakers of the running gateways."""


@breaker.command("reset")
@_config_option
@click.argument("provider")
def breaker_reset(config: str | None, provider: str) -> None:
    """Close PROVIDER's circuit breakers in every running gateway (the way out of
    `mode: manual_reset`). Gateways act on it at their next pool refresh."""
    settings = _load(config)
    if provider not in settings.providers:
        known = ", ".join(sorted(settings.providers)) or "none"
        click.echo(f"unknown provider {provider!r}; the config has: {known}", err=True)
        raise SystemExit(2)

    async def work(store: Store) -> None:
        await store.request_breaker_reset(provider)
        wait = settings.gateway.refresh_interval_sec
        click.echo(f"reset of {provider}'s breakers requested; gateways apply it within {wait:g}s")

    _run_with_store(settings, work)


def _status_table(counts: list[StatusCount], now: float) -> str:
    rows = [("PROVIDER", "MODEL", "STATUS", "COUNT", "NEXT CHECK")]
    rows += [
        (c.provider, c.model, c.status, str(c.count), _humanize(c.next_check_at, now))
        for c in counts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            value.rjust(width) if column == 3 else value.ljust(width)
            for column, (value, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def _humanize(at: float | None, now: float) -> str:
    """When a check is due, relative to `now`: `now`, `in 5m`, `overdue 2h`, or `-`."""
    if at is None:
        return "-"
    delta = at - now
    if abs(delta) < 1:
        return "now"
    amount = abs(delta)
    unit, size = next(
        (u, s) for u, s in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if amount >= s
    )
    text = f"{int(amount // size)}{unit}"
    return f"in {text}" if delta > 0 else f"overdue {text}"


# -- serving: gateway, serve ----------------------------------------------------------------------

_host_option = click.option(
    "--host", metavar="HOST", help="Listen address (default: gateway.host)."
)
_port_option = click.option(
    "--port", type=click.IntRange(0, 65535), help="Listen port (default: gateway.port)."
)


@main.command()
@_config_option
@_host_option
@_port_option
@click.option(
    "--workers", type=click.IntRange(1), help="Server processes (default: gateway.workers)."
)
def gateway(config: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """The Conductor: serve the OpenAI and Gemini routes from the healthy key pool.

    It applies migrations and runs one key-file sync at start, then leaves syncing and probing
    to the Keeper (`llmgateway worker`). Stops on Ctrl-C or SIGTERM.
    """
    import os

    import uvicorn

    from llmgateway.conductor.edge import EdgeLimits
    from llmgateway.conductor.serving import uvicorn_config
    from llmgateway.config.load import config_path
    from llmgateway.observe.metrics_http import multiprocess_dir

    settings = _load(config)
    _setup_logging(settings, "gateway")
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    _guard_tokens(settings, host, _metrics_hosts(settings, host, keeper=False))
    _prepare_store(config)  # migrations and a file sync, with a one-line error if the store fails
    workers = workers or settings.gateway.workers
    limits = EdgeLimits.of(settings.gateway)
    if workers == 1:
        from llmgateway.conductor.app import create_app

        app = create_app(settings, prepare=False, tune_process=True)
        uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
        return
    from uvicorn.supervisors import Multiprocess

    os.environ["LLMGATEWAY_CONFIG"] = str(config_path(config).resolve())
    os.environ["LLMGATEWAY_PREPARED"] = "1"
    with multiprocess_dir():  # the workers' metrics add up there; removed at the end
        factory = "llmgateway.conductor.app:app_from_environment"
        served = uvicorn_config(factory, host, port, limits, factory=True, workers=workers)
        Multiprocess(served, sockets=[served.bind_socket()]).run()


@main.command()
@_config_option
@_host_option
@_port_option
def serve(config: str | None, host: str | None, port: int | None) -> None:
    """The gateway and the Keeper in one process: the embedded, single-machine setup."""
    import uvloop

    settings = _load(config)
    _setup_logging(settings, "serve")
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    _guard_tokens(settings, host, _metrics_hosts(settings, host, keeper=True))
    _prepare_store(config)  # as `gateway` does: migrations and a file sync, once, before serving
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve_both(settings, host, port))
    click.echo("stopped")


async def _serve_both(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from llmgateway.conductor.app import create_app
    from llmgateway.conductor.edge import EdgeLimits
    from llmgateway.conductor.serving import uvicorn_config
    from llmgateway.keeper.run import Keeper
    from llmgateway.observe.metrics import Metrics
    from llmgateway.store import Store

    metrics = Metrics.create()  # one set: the gateway's /metrics shows the Keeper's too
    app = create_app(settings, prepare=False, metrics=metrics, tune_process=True)
    server = uvicorn.Server(uvicorn_config(app, host, port, EdgeLimits.of(settings.gateway)))
    stop = asyncio.Event()
    async with await Store.open(settings.database.async_url, settings.database.pool_size) as store:
        run = Keeper(settings, store, metrics=metrics).run(stop)
        keeper = asyncio.create_task(run, name="keeper")
        try:
            await server.serve()
        finally:
            stop.set()
            await keeper


@main.command()
@click.option(
    "--port",
    default=55300,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Gateway port (0: any free port).",
)
def demo(port: int) -> None:
    """A self-contained tour: a fake provider, demo keys (some bad), gateway and keeper on
    SQLite in a temporary folder. Prints what to try; Ctrl-C stops it and removes the folder."""
    import shutil
    import tempfile
    from pathlib import Path

    import uvloop

    from llmgateway.cli.demo import run_demo
    from llmgateway.config.settings import LoggingSettings
    from llmgateway.observe.logs import configure

    configure(LoggingSettings(level="WARNING"), name="demo")
    folder = Path(tempfile.mkdtemp(prefix="llmgateway-demo-"))
    try:
        uvloop.run(run_demo(folder, port, click.echo))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        click.echo(f"demo: cannot listen on port {port}: {reason}; try --port 0", err=True)
        raise SystemExit(2) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    click.echo(f"demo stopped; {folder} removed")


def _setup_logging(settings: Settings, name: str, level: str | None = None) -> None:
    from llmgateway.observe.logs import setup

    setup(settings, name, level)
