"""The `llmgateway` command line (also `python -m llmgateway`): the command group, with
`check-config`, `fake-upstream` and `demo`; the commands of each role are in their own modules
(`cli.gateway`, `cli.worker`, `cli.store`)."""

from __future__ import annotations

import click

from llmgateway import __version__
from llmgateway.cli.clients import clients
from llmgateway.cli.gateway import gateway, serve
from llmgateway.cli.key_actions import ACTIONS as KEY_ACTIONS
from llmgateway.cli.key_transfer import keys_export, keys_import
from llmgateway.cli.keys import keys
from llmgateway.cli.reload import reload
from llmgateway.cli.startup import (
    config_option,
    echo_env_file,
    env_file_option,
    group_env_file_option,
)
from llmgateway.cli.store import breaker, db, status
from llmgateway.cli.tokens import WAY_OUT
from llmgateway.cli.usage import client_usage, usage
from llmgateway.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmgateway")
@group_env_file_option
def main() -> None:
    """llmgateway: one reliable endpoint in front of many unstable LLM provider keys.

    Every command first reads .env from the working directory (or --env-file PATH, before or
    after the command; --env-file none or $LLMGATEWAY_DOTENV=0: none), never overriding
    variables already set. The config file is --config, else $LLMGATEWAY_CONFIG, else
    config/providers.yaml.
    """


@main.command("check-config")
@config_option
@click.argument("path", required=False, metavar="[PATH]")
def check_config(config: str | None, path: str | None) -> None:
    """Validate the config file (--config PATH, or PATH as the argument); exit 0, or exit 2
    listing every problem (secrets masked)."""
    from llmgateway.config.load import config_path, load_settings
    from llmgateway.config.problems import ConfigError

    if config and path and config != path:
        raise click.UsageError(f"two config files given: --config {config} and {path}")
    echo_env_file()
    target = config_path(config or path)
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
    database = settings.database
    summary = f"ok: {count} {noun} ({names}), "
    if settings.routes:
        summary += _counted(list(settings.routes), "route")
        summary += _counted([t.name for t in settings.gateway.tokens], "gateway token")
    summary += f"database: {database.backend}"
    if database.backend == "postgresql" and (database.direct_url or database.pooler != "auto"):
        summary += f" (pooler: {database.pooler.value}"
        summary += ", direct_url set)" if database.direct_url else ")"
    if any(p.gateway_policy.key_limits.enabled for p in settings.providers.values()):
        from llmgateway.limits import backend_of

        summary += f", per-key limits counted by: {backend_of(settings).value}"
    click.echo(summary)
    from llmgateway.config.reachable import (
        idle_targets,
        split_routes,
        unreachable_models,
        unused_aliases,
    )
    from llmgateway.config.weak_tokens import weak_tokens

    if not settings.gateway.allow_weak_tokens:
        for where, why in weak_tokens(settings):
            click.echo(f"warning: {where}: {why}, refused off loopback; {WAY_OUT}", err=True)
    for where, why in (
        unreachable_models(settings)
        + idle_targets(settings)
        + split_routes(settings)
        + unused_aliases(settings)
    ):
        click.echo(f"warning: {where}: {why}", err=True)


def _counted(names: list[str], noun: str) -> str:
    """`2 routes (fast, long), ` for the summary line."""
    plural = "" if len(names) == 1 else "s"
    return f"{len(names)} {noun}{plural} ({', '.join(names)}), "


@main.command("fake-upstream")
@env_file_option
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

    echo_env_file()
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


@main.command()
@env_file_option
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

    echo_env_file()
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


main.add_command(db)
main.add_command(status)
main.add_command(usage)
for _action in KEY_ACTIONS:
    keys.add_command(_action)
main.add_command(keys)
keys.add_command(keys_export)
keys.add_command(keys_import)
main.add_command(breaker)
main.add_command(worker)
main.add_command(gateway)
main.add_command(serve)
main.add_command(reload)
clients.add_command(client_usage)
main.add_command(clients)
