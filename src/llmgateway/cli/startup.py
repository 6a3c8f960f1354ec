"""What the commands share: the `--env-file` and `--config` options, reading the environment
file, loading the settings (exit 2 listing every problem), logging, and running work against
the store (exit 1 with one line when the database fails)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from llmgateway.config.env_file import EnvFileRead
    from llmgateway.config.settings import Settings
    from llmgateway.observe.logs import Redactor
    from llmgateway.store import Adoption, Migration, Store

_F = TypeVar("_F", bound=Callable[..., Any])
_GROUP_CHOICE = "llmgateway.env_file.option"
_READ = "llmgateway.env_file.read"
_REPORTED = "llmgateway.env_file.reported"
_ENV_FILE_HELP = (
    "Environment file to read first, never overriding variables already set; 'none': read "
    "none (default: .env in the working directory, unless $LLMGATEWAY_DOTENV=0)."
)


def _note_group_env_file(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """`llmgateway --env-file X COMMAND`: kept for the command, which reads it."""
    if value is not None:
        ctx.meta[_GROUP_CHOICE] = value


def _read_env_file(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """Read the environment file before the command runs (exit 2 naming the file and line
    when it cannot be read or parsed)."""
    from llmgateway.config.env_file import load_env_file
    from llmgateway.config.problems import ConfigError

    before = ctx.meta.get(_GROUP_CHOICE)
    if value is not None and before is not None and value != before:
        raise click.UsageError("--env-file is given twice, before and after the command")
    try:
        ctx.meta[_READ] = load_env_file(value if value is not None else before)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(2) from None


def _env_file(
    callback: Callable[[click.Context, click.Parameter, str | None], None],
) -> Callable[[_F], _F]:
    return click.option(
        "--env-file",
        metavar="PATH",
        expose_value=False,
        is_eager=True,
        callback=callback,
        help=_ENV_FILE_HELP,
    )


group_env_file_option = _env_file(_note_group_env_file)
"""The group's: `llmgateway --env-file X COMMAND` (the command reads X)."""
env_file_option = _env_file(_read_env_file)
"""Every command has it: the environment file is read first, before the config is."""

_config = click.option(
    "--config",
    "config",
    metavar="PATH",
    help="Config file (default: $LLMGATEWAY_CONFIG, else config/providers.yaml).",
)


def config_option(command: _F) -> _F:
    """The `--config` option, and `--env-file` (read before the config)."""
    return env_file_option(_config(command))


def env_file_read() -> EnvFileRead | None:
    """What the command's environment file set (names only), or None when none was read."""
    ctx = click.get_current_context(silent=True)
    read: EnvFileRead | None = None if ctx is None else ctx.meta.get(_READ)
    return read


def echo_env_file() -> None:
    """Say on stderr which environment file was read and the names it set (once)."""
    ctx = click.get_current_context(silent=True)
    read = env_file_read()
    if ctx is not None and read is not None and not ctx.meta.get(_REPORTED):
        ctx.meta[_REPORTED] = True
        click.echo(read.describe(), err=True)


def load(config: str | None, *, logs: bool = False) -> Settings:
    """The settings, or exit 2 listing every problem (no traceback). Which environment file
    was read is said first on stderr, or, when the command `logs`, in its log."""
    from llmgateway.config.load import config_path, load_settings
    from llmgateway.config.problems import ConfigError

    if not logs:
        echo_env_file()
    target = config_path(config)
    try:
        return load_settings(target)
    except ConfigError as exc:
        echo_env_file()  # the log is not set up yet: say it beside the problems
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(2) from None


def run_with_store(
    settings: Settings,
    work: Callable[[Store], Awaitable[None]],
    *,
    adoption: Adoption | None = None,
    show: Callable[[Migration], None] | None = None,
    migrate: bool = True,
) -> None:
    """Open the store, migrate it (importing the original llmGateway's tables when found, as
    `adoption` says: by default without force), run `work` (not after a dry run); a database
    failure exits 1 with one line. `show` prints what the migration did (by default: an
    import, on stderr). Without `migrate`, `work` runs on the store as it is."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmgateway.store import (
        Adoption,
        DatabaseUrlError,
        OriginalDatabaseError,
        Store,
        masked_url,
    )

    url = settings.database.async_url
    chosen = adoption or Adoption.of(settings.providers)

    async def run() -> None:
        async with await Store.configured(settings.database) as store:
            if not migrate:
                await work(store)
                return
            migration = await store.migrate(chosen)
            (show or _show_import(masked_url(url)))(migration)
            if not migration.dry_run:
                await work(store)

    try:
        asyncio.run(run())
    except DatabaseUrlError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    except OriginalDatabaseError as exc:
        click.echo(f"{masked_url(url)}: {exc}", err=True)
        raise SystemExit(1) from None
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        why = (getattr(cause, "strerror", None) or str(cause)).splitlines()[0][:200]
        where = masked_url(url)
        direct = settings.database.direct_async_url
        if direct is not None:  # migrations and session features go there
            where += f" (direct_url {masked_url(direct)})"
        click.echo(f"cannot use the database at {where}: {type(cause).__name__}: {why}", err=True)
        raise SystemExit(1) from None


def _show_import(where: str) -> Callable[[Migration], None]:
    """What a start says about the original's tables: only an import, on stderr."""

    def show(migration: Migration) -> None:
        from llmgateway.cli.original import describe
        from llmgateway.store.original import State

        report = migration.original
        if report is not None and report.state is State.IMPORTED:
            for line in describe(migration, where):
                click.echo(line, err=True)

    return show


def setup_logging(
    settings: Settings, name: str, level: str | None = None, *, key_files: bool = True
) -> Redactor:
    """Logging as the settings say, for the process `name` (`level` overrides theirs); the
    redactor of its lines is returned (`key_files`: see `observe.logs.setup`)."""
    from llmgateway.observe.logs import setup

    redactor = setup(settings, name, level, key_files=key_files)
    read = env_file_read()
    if read is not None:
        logging.getLogger("llmgateway.env").info("%s", read.describe())
    return redactor
