"""`llmgateway clients`: the client tokens stored in the database (create, list, show, update,
disable, enable, rotate, delete), beside the read-only ones the config declares
(`gateway.tokens`). A secret is printed once, by `create` and `rotate`; the store keeps only
its SHA-256. Every change reaches the running gateways at once on PostgreSQL, at their next
refresh on SQLite."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from llmgateway.cli.startup import config_option, load, run_with_store

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.store import Store

_F = TypeVar("_F", bound=Callable[..., Any])


def _rule_options(command: _F) -> _F:
    """The options `create` and `update` share (each None: not given)."""
    options = [
        click.option(
            "--routes", help="Route aliases it may use (comma-separated globs; '*': all)."
        ),
        click.option("--providers", help="Providers it may name as <provider>/<model> (globs)."),
        click.option("--models", help="Model names it may ask for (globs; empty: any)."),
        click.option("--rpm", type=click.IntRange(0), help="Requests per minute (0: unlimited)."),
        click.option("--tpm", type=click.IntRange(0), help="Tokens per minute (0: unlimited)."),
        click.option(
            "--max-parallel", type=click.IntRange(0), help="Requests in flight (0: unlimited)."
        ),
        click.option("--quota", type=click.IntRange(0), help="Tokens per period (0: none)."),
        click.option("--period", type=click.Choice(["day", "week", "month"]), help="Quota period."),
        click.option("--expires", help="2027-01-01, an ISO time (UTC), 30d, 12h, or 'never'."),
        click.option(
            "--allow-ip", "allow_ip", multiple=True, help="CIDR it may come from (repeat; 'any')."
        ),
        click.option("--notes", help="Free text shown by list and show."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _changes(given: dict[str, Any], now: float, *, new: bool = False) -> dict[str, object]:
    """The rule columns the options given set (exit 2 on a bad value); for a `new` client,
    every rule column (the defaults where no option is given)."""
    from llmgateway.client_edits import RuleError, rule_changes

    try:
        return rule_changes(given, now, new=new)
    except RuleError as error:
        raise click.BadParameter(str(error), param_hint=error.option) from None


def _refuse_config(settings: Settings, name: str, action: str) -> None:
    from llmgateway.client_edits import config_token, read_only

    if config_token(settings, name) is not None:
        click.echo(read_only(name, action), err=True)
        raise SystemExit(2)


def _missing(name: str) -> NoReturn:
    click.echo(f"no client named {name!r}; `llmgateway clients list` shows them", err=True)
    raise SystemExit(1)


@click.group()
def clients() -> None:
    """Client tokens: each one's routes, limits, expiry and address ranges."""


@clients.command("create")
@config_option
@click.argument("name")
@_rule_options
def create(config: str | None, name: str, **given: Any) -> None:
    """Create client NAME and print its token, once."""
    from llmgateway.client_edits import NAME_RULE, config_token, new_client
    from llmgateway.config.route_settings import valid_name
    from llmgateway.store import clients as stored

    if not valid_name(name):
        raise click.BadParameter(NAME_RULE, param_hint="NAME")
    settings = load(config)
    if config_token(settings, name) is not None:
        click.echo(f"client {name!r} is already declared in the config file", err=True)
        raise SystemExit(2)
    now = time.time()
    secret, values = new_client(name, _changes(given, now, new=True))

    async def work(store: Store) -> None:
        try:
            await stored.create(store.engine, values, now)
        except stored.NameTaken:
            click.echo(f"a client named {name!r} exists already", err=True)
            raise SystemExit(1) from None
        click.echo(f"client {name} created; its token (shown once: store it now):")
        click.echo(secret)

    run_with_store(settings, work)


@clients.command("update")
@config_option
@click.argument("name")
@_rule_options
def update(config: str | None, name: str, **given: Any) -> None:
    """Change what client NAME may use and its limits (only the options given)."""
    settings = load(config)
    _refuse_config(settings, name, "change")
    values = _changes(given, time.time())
    if not values:
        raise click.UsageError("nothing to change: give at least one option")
    _change(settings, name, values, f"client {name} updated")


def _change(settings: Settings, name: str, values: dict[str, object], said: str) -> None:
    from llmgateway.store import clients as stored

    async def work(store: Store) -> None:
        if not await stored.change(store.engine, name, values, time.time()):
            _missing(name)
        click.echo(said)

    run_with_store(settings, work)


@clients.command("disable")
@config_option
@click.argument("name")
def disable(config: str | None, name: str) -> None:
    """Refuse client NAME's token from now on (kept; `enable` lets it in again)."""
    settings = load(config)
    _refuse_config(settings, name, "remove")
    _change(settings, name, {"enabled": False}, f"client {name} disabled")


@clients.command("enable")
@config_option
@click.argument("name")
def enable(config: str | None, name: str) -> None:
    """Accept client NAME's token again."""
    settings = load(config)
    _refuse_config(settings, name, "add")
    _change(settings, name, {"enabled": True}, f"client {name} enabled")


@clients.command("rotate")
@config_option
@click.argument("name")
@click.option(
    "--grace", default="0h", show_default=True, help="How long the old token stays valid."
)
def rotate(config: str | None, name: str, grace: str) -> None:
    """Issue client NAME a new token (printed once); the old one works until --grace ends."""
    from llmgateway.client_edits import rotation
    from llmgateway.core.clients import parse_span

    span = parse_span(grace)
    if span is None:
        raise click.BadParameter(f"{grace!r}: e.g. 24h, 2d, 1w", param_hint="--grace")
    settings = load(config)
    _refuse_config(settings, name, "rotate")
    from llmgateway.store import clients as stored

    async def work(store: Store) -> None:
        found = await stored.find(store.engine, name)
        if found is None:
            _missing(name)
            return
        now = time.time()
        secret, values = rotation(found, span, now)
        await stored.change(store.engine, name, values, now)
        ends = f"the old one works for {grace} more" if span > 0 else "the old one is refused"
        click.echo(f"client {name} rotated ({ends}); its new token (shown once: store it now):")
        click.echo(secret)

    run_with_store(settings, work)


@clients.command("delete")
@config_option
@click.argument("name")
def delete(config: str | None, name: str) -> None:
    """Remove client NAME (its token is refused from now on)."""
    from llmgateway.store import clients as stored

    settings = load(config)
    _refuse_config(settings, name, "remove")

    async def work(store: Store) -> None:
        if not await stored.delete(store.engine, name):
            _missing(name)
        click.echo(f"client {name} deleted")

    run_with_store(settings, work)


@clients.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def list_clients(config: str | None, as_json: bool) -> None:
    """Every client: stored ones, then those the config declares (read-only); a quota as
    spent/quota/period."""
    from llmgateway.client_edits import add_spend
    from llmgateway.client_views import client_table, stored_view, token_view
    from llmgateway.store import clients as stored

    settings = load(config)

    async def work(store: Store) -> None:
        now = time.time()
        rows = await stored.all_clients(store.engine)
        views = [stored_view(r, now) for r in rows]
        views += [token_view(t, now) for t in settings.gateway.tokens]
        await add_spend(store, settings, views, now)
        if as_json:
            click.echo(json.dumps(views, indent=2))
        else:
            click.echo(client_table(views) if views else "no clients")

    run_with_store(settings, work)


@clients.command("show")
@config_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show(config: str | None, name: str, as_json: bool) -> None:
    """One client's settings (never its token: its first and last characters) and the
    tokens spent of its quota in the current period."""
    from llmgateway.client_edits import add_spend, config_token
    from llmgateway.client_views import stored_view, token_view
    from llmgateway.store import clients as stored

    settings = load(config)

    async def work(store: Store) -> None:
        now = time.time()
        declared = config_token(settings, name)
        if declared is not None:
            view = token_view(declared, now)
        else:
            found = await stored.find(store.engine, name)
            if found is None:
                _missing(name)
            view = stored_view(found, now)
        await add_spend(store, settings, [view], now)
        if as_json:
            click.echo(json.dumps(view, indent=2))
            return
        for key, value in view.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            click.echo(f"{key + ':':<15} {'-' if shown in (None, '') else shown}")

    run_with_store(settings, work)
