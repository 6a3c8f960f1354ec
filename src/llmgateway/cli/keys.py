"""`llmgateway keys list|show`: the keys in the store one by one, read from the store only.

`key_filter_options` is the filter every `keys` command takes (`--provider`, `--model`,
`--status`, `--status-code`, `--search`), read by `llmgateway.key_filter` as the console's filter
is, and handed to the command as one `KeyFilter`. `--status` takes a stored status
(`invalid_key`) or a state (`invalid`: `invalid_key` and `no_access`). Nothing filters on the
secret itself, and nothing prints it: keys are shown masked and by fingerprint.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from llmgateway.cli.startup import config_option, load, run_with_store
from llmgateway.key_filter import STATE_CHOICES, read_filter
from llmgateway.records import KeyFilter

if TYPE_CHECKING:
    from llmgateway.store import Store

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LIMIT = 100
MIN_PREFIX = 4
SHOW_MOST = 20
"""Keys `keys show` prints for one prefix (a longer prefix picks among more)."""

_HEX = re.compile(r"[0-9a-fA-F]+")
_FLAGS = {"provider": "--provider", "model": "--model", "state": "--status"}
_FLAGS |= {"code": "--status-code", "q": "--search"}


def key_filter_options(command: _F) -> _F:
    """The filter options, given to `command` as `key_filter`."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        provider: str | None,
        model: str | None,
        status: tuple[str, ...],
        status_code: str | None,
        search: str | None,
        **kw: Any,
    ) -> Any:
        read = read_filter(
            provider=provider or "",
            model=model or "",
            states=status,
            code=(status_code or "").strip(),
            search=(search or "").strip(),
        )
        for name, problem in read.problems.items():
            raise click.BadParameter(problem, param_hint=f"'{_FLAGS[name]}'")
        return command(*args, key_filter=read.key_filter, **kw)

    options = (
        click.option("--provider", metavar="NAME", help="Only this provider's keys."),
        click.option(
            "--model",
            metavar="NAME",
            help="Only this model's rows ('shared': providers with shared_key_status).",
        ),
        click.option(
            "--status",
            "status",
            multiple=True,
            type=click.Choice(STATE_CHOICES),
            metavar="STATUS",
            help="Only rows with this status (invalid_key, no_quota, …) or state (invalid: "
            "invalid_key and no_access; healthy; cooling; …; disabled: the keys `keys "
            "disable` took out). Repeat for several.",
        ),
        click.option(
            "--status-code",
            metavar="CODE",
            help="Only rows whose last answer had this HTTP status code (e.g. 429).",
        ),
        click.option(
            "--search",
            metavar="TEXT",
            help="Only the keys whose fingerprint starts with TEXT (4 to 64 hex digits) or whose "
            "masked key ends with TEXT (its last four characters, as in sk-…a1b2).",
        ),
    )
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


@click.group()
def keys() -> None:
    """The keys in the store one by one: which are dead, why, and the file:line holding each."""


@keys.command("list")
@config_option
@key_filter_options
@click.option(
    "--limit",
    default=DEFAULT_LIMIT,
    show_default=True,
    type=click.IntRange(0),
    help="Rows to print (0: all, streamed page by page).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
def keys_list(config: str | None, key_filter: KeyFilter, limit: int, as_json: bool) -> None:
    """The active (key, model) rows in key order: fingerprint, masked key, state, status,
    last status code, failing since, next check, file:line and last error."""
    from llmgateway.cli.key_tables import dumps, list_lines, listing_json
    from llmgateway.store.key_list import count_matching, listing_pages

    settings = load(config)

    async def work(store: Store) -> None:
        now = time.time()
        shown = 0
        if as_json:
            click.echo('{"keys":[', nl=False)
        async for page in listing_pages(store, key_filter, limit or None):
            if as_json:
                items = ",\n".join(dumps(listing_json(row)) for row in page)
                click.echo(("," if shown else "") + "\n" + items, nl=False)
            else:
                click.echo("\n".join(list_lines(page, now, header=not shown)))
            shown += len(page)
        more = 0
        if limit and shown == limit:
            more = await count_matching(store, key_filter) - shown
        if as_json:
            click.echo(f'\n],"shown":{shown},"more":{more}}}')
            return
        narrowed = key_filter.describe()
        if not shown:
            click.echo(f"no keys match{' ' + narrowed if narrowed else ''}")
        elif more:
            click.echo(
                f"… and {more} more match; --limit 0 prints them all"
                + ("" if narrowed else ", or narrow it (--provider, --model, --status, …)")
            )

    run_with_store(settings, work)


@keys.command("show")
@config_option
@click.argument("fingerprint")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
def keys_show(config: str | None, fingerprint: str, as_json: bool) -> None:
    """Every key whose fingerprint starts with FINGERPRINT (at least 4 hex digits, as in log
    lines), with where the files hold it and every model row, removed keys included."""
    from llmgateway.cli.key_tables import key_json, show_lines
    from llmgateway.store.key_list import by_fingerprint

    prefix = fingerprint.strip().lower()
    if len(prefix) < MIN_PREFIX or len(prefix) > 64 or not _HEX.fullmatch(prefix):
        raise click.UsageError(
            f"FINGERPRINT is {MIN_PREFIX} to 64 hex digits (as in the log lines), "
            f"e.g. 1a2b3c4d5e6f; got {len(prefix)} characters"
        )
    settings = load(config)
    missing = False

    async def work(store: Store) -> None:
        nonlocal missing
        found, total = await by_fingerprint(store, prefix, SHOW_MOST)
        if as_json:
            import json

            report = {"keys": [key_json(rows) for rows in found], "more": total - len(found)}
            click.echo(json.dumps(report, indent=2))
        elif found:
            now = time.time()
            if total > 1:
                click.echo(f"{total} keys have a fingerprint starting with {prefix}:\n")
            click.echo("\n\n".join("\n".join(show_lines(rows, now)) for rows in found))
            if total > len(found):
                click.echo(f"\n… and {total - len(found)} more; give more digits")
            elif total > 1:
                click.echo("\ngive more digits to tell them apart")
        missing = not found
        if missing and not as_json:
            click.echo(f"no key has a fingerprint starting with {prefix}", err=True)

    run_with_store(settings, work)
    if missing:
        raise SystemExit(1)
