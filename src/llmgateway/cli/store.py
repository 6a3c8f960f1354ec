"""The commands that work on the store: `db upgrade`, `db sync`, `status` and `breaker reset`,
and the sync summary they print (shared with `worker --once`)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, run_with_store, setup_logging

if TYPE_CHECKING:
    from llmgateway.keyfiles import SyncReport
    from llmgateway.store import Store


@click.group()
def db() -> None:
    """The database (SQLite by default, PostgreSQL for production)."""


@db.command("upgrade")
@config_option
@click.option("--sync", is_flag=True, help="Then run one sync of the key and proxy files.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be done (migrations, the original llmGateway's tables); change nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import the original llmGateway's tables although it checked a key minutes ago.",
)
def db_upgrade(config: str | None, sync: bool, dry_run: bool, force: bool) -> None:
    """Apply the database migrations (the gateway and worker also do it at start), importing
    the original llmGateway's tables if the database has them."""
    from llmgateway.cli.original import describe
    from llmgateway.keyfiles import run_sync
    from llmgateway.store import Adoption, Migration, async_url, masked_url
    from llmgateway.store.connect import head_revision, sqlite_file
    from llmgateway.store.locks import exclusive_start

    if dry_run and sync:
        raise click.UsageError("--dry-run changes nothing, so it cannot --sync")
    settings = load(config, logs=sync)
    if sync:
        setup_logging(settings, "prepare")
    where = masked_url(settings.database.async_url)
    file = sqlite_file(async_url(settings.database.async_url))
    if dry_run and file is not None and not file.exists():
        click.echo(f"{where}: dry run: would create {file} and migrate it to {head_revision()}")
        return

    def show(migration: Migration) -> None:
        for line in describe(migration, where):
            click.echo(line)
        if not migration.dry_run:
            click.echo(f"{where}: schema up to date ({migration.revision})")
        elif migration.revision == (head := head_revision()):
            click.echo(f"{where}: dry run: schema up to date ({head}); nothing changed")
        else:
            before = migration.revision or "empty"
            click.echo(f"{where}: dry run: would migrate {before} → {head}; nothing changed")

    async def work(store: Store) -> None:
        if sync:
            async with exclusive_start(store.engine.url):
                echo_sync(await run_sync(settings, store))

    adoption = Adoption.of(settings.providers, force=force, dry_run=dry_run)
    run_with_store(settings, work, adoption=adoption, show=show)


@db.command("sync")
@config_option
def db_sync(config: str | None) -> None:
    """Run one sync of the key and proxy files into the store, which must be migrated already
    (`db upgrade`). The gateway runs it in the background at start."""
    from llmgateway.keyfiles import run_sync
    from llmgateway.store import masked_url
    from llmgateway.store.locks import exclusive_start

    settings = load(config, logs=True)
    setup_logging(settings, "sync")

    async def work(store: Store) -> None:
        why = (await store.schema_state()).why_migrate()
        if why is not None:
            where = masked_url(settings.database.async_url)
            click.echo(f"{where}: {why}: run `llmgateway db upgrade` first", err=True)
            raise SystemExit(1)
        async with exclusive_start(store.engine.url):
            echo_sync(await run_sync(settings, store))

    run_with_store(settings, work, migrate=False)


def echo_sync(report: SyncReport) -> None:
    """Print what a file sync changed, one line per provider, then its problems."""
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


@click.command()
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (keys, breakers, proxies) instead."
)
def status(config: str | None, as_json: bool) -> None:
    """The pool as a table: provider, model, status, state, count, next check.

    `shared` in the model column: one status for all models (shared_key_status).
    """
    from llmgateway.cli.render import (
        breaker_table,
        config_table,
        proxy_table,
        status_table,
        targets_table,
        untested_notes,
    )
    from llmgateway.core.key_states import shown_state
    from llmgateway.store.config_runs import SHOWN_FOR_SEC, recent_runs
    from llmgateway.store.report import proxy_counts
    from llmgateway.store.route_report import route_targets

    settings = load(config)

    async def work(store: Store) -> None:
        counts = await store.status_counts()
        breakers = await store.breakers()
        proxy_rows = await proxy_counts(store)
        routes = route_targets(settings, counts, breakers)
        runs = await recent_runs(store.engine, time.time() - SHOWN_FOR_SEC)
        if as_json:
            report = {
                "keys": [dataclasses.asdict(c) | {"state": shown_state(c.status)} for c in counts],
                "breakers": [dataclasses.asdict(b) for b in breakers],
                "proxies": [dataclasses.asdict(p) for p in proxy_rows],
                "routes": [dataclasses.asdict(r) for r in routes],
                "processes": [dataclasses.asdict(r) for r in runs],
            }
            click.echo(json.dumps(report, indent=2))
            return
        if not counts:
            click.echo("no keys in the store yet (`llmgateway worker --once` syncs the files)")
        else:
            click.echo(status_table(counts, time.time()))
            tested_only = {
                name
                for name, provider in settings.providers.items()
                if not provider.gateway_policy.serve_untested_keys
            }
            for note in untested_notes(counts, tested_only):
                click.echo(note)
        if breakers:
            click.echo("\n" + breaker_table(breakers, time.time()))
        if proxy_rows:
            click.echo("\n" + proxy_table(proxy_rows))
        if routes:
            click.echo("\n" + targets_table(routes))
        if runs:
            click.echo("\n" + config_table(runs, time.time()))

    run_with_store(settings, work)


@click.group()
def breaker() -> None:
    """Circuit breakers of the running gateways."""


@breaker.command("reset")
@config_option
@click.argument("provider")
def breaker_reset(config: str | None, provider: str) -> None:
    """Close PROVIDER's circuit breakers in every running gateway (the way out of
    `mode: manual_reset`). Gateways act on it at their next pool refresh. Recorded in the
    audit log, as the console's reset is."""
    settings = load(config)
    if provider not in settings.providers:
        known = ", ".join(sorted(settings.providers)) or "none"
        click.echo(f"unknown provider {provider!r}; the config has: {known}", err=True)
        raise SystemExit(2)

    async def work(store: Store) -> None:
        from llmgateway.records import Actor
        from llmgateway.store import audit

        await store.request_breaker_reset(provider)
        await audit.record(store, Actor.cli(), "breaker reset", provider, 0)  # as the console
        wait = settings.gateway.refresh_interval_sec
        click.echo(f"reset of {provider}'s breakers requested; gateways apply it within {wait:g}s")

    run_with_store(settings, work)
