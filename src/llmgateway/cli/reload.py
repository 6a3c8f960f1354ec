"""`llmgateway reload`: ask every running gateway and keeper, on any machine, to re-read its
config file, through the store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, run_with_store

if TYPE_CHECKING:
    from llmgateway.store import Store


@click.command("reload")
@config_option
def reload(config: str | None) -> None:
    """Ask every gateway and keeper using this store to re-read its config file.

    The request carries the hash of the config file read here; each process applies its own
    file at its next refresh (within a second on PostgreSQL) and reports the hash it runs,
    which `llmgateway status` shows. A process whose new config is invalid keeps its old one.
    """
    from llmgateway.config.load import config_path
    from llmgateway.reloading import config_hash
    from llmgateway.store.config_runs import request_reload

    settings = load(config)  # an invalid config is refused here first: exit 2, every problem
    wanted = config_hash(config_path(config))

    async def work(store: Store) -> None:
        await request_reload(store.engine, wanted, time.time())
        wait = settings.gateway.refresh_interval_sec
        click.echo(
            f"reload of config {wanted} requested; running processes apply it within {wait:g}s "
            "(at once on PostgreSQL); `llmgateway status` shows the config each one runs"
        )

    run_with_store(settings, work)
