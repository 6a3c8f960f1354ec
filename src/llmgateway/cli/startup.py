"""What the commands share: the `--config` option, loading the settings (exit 2 listing every
problem), logging, and running work against the store (exit 1 with one line when the database
fails)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.store import Store

config_option = click.option(
    "--config",
    "config",
    metavar="PATH",
    help="Config file (default: $LLMGATEWAY_CONFIG, else config/providers.yaml).",
)


def load(config: str | None) -> Settings:
    """The settings, or exit 2 listing every problem (no traceback)."""
    from llmgateway.config.load import config_path, load_settings
    from llmgateway.config.problems import ConfigError

    target = config_path(config)
    try:
        return load_settings(target)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(2) from None


def run_with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    """Open the store, migrate it, run `work`; a database failure exits 1 with one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmgateway.store import DatabaseUrlError, Store, masked_url

    url = settings.database.async_url

    async def run() -> None:
        async with await Store.configured(settings.database) as store:
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
        where = masked_url(url)
        direct = settings.database.direct_async_url
        if direct is not None:  # migrations and session features go there
            where += f" (direct_url {masked_url(direct)})"
        click.echo(f"cannot use the database at {where}: {type(cause).__name__}: {why}", err=True)
        raise SystemExit(1) from None


def setup_logging(settings: Settings, name: str, level: str | None = None) -> None:
    """Logging as the settings say, for the process `name` (`level` overrides theirs)."""
    from llmgateway.observe.logs import setup

    setup(settings, name, level)
