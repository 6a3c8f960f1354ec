"""`llmgateway usage`: the tokens the gateways relayed, summed per client, route, model, key or
provider over the last hours or days (from the store's hourly counts; keys by fingerprint and
masked, never in full)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from llmgateway.cli.startup import config_option, load, run_with_store

if TYPE_CHECKING:
    from llmgateway.store import Store
    from llmgateway.store.token_usage import By, Total

_SPAN = re.compile(r"(\d+(?:\.\d+)?)([hdw])")
_UNIT = {"h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
COLUMNS = ("requests", "input", "output", "cached", "reasoning", "missing")


def span_seconds(text: str) -> float:
    """`7d`, `12h`, `2w` as seconds (click's error for anything else)."""
    found = _SPAN.fullmatch(text.strip())
    if found is None:
        raise click.BadParameter(f"{text!r} is not a span like 12h, 7d or 2w", param_hint="--since")
    return float(found.group(1)) * _UNIT[found.group(2)]


def _sums_options(choices: tuple[str, ...]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options `usage` and `clients usage` share: the span, the grouping, the format."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            (
                config_option,
                click.option(
                    "--since", default="7d", show_default=True, help="How far back: 12h, 7d, 2w."
                ),
                click.option(
                    "--by",
                    type=click.Choice(choices),
                    default="client",
                    show_default=True,
                    help="What the sums are grouped by.",
                ),
                click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table."),
                click.option(
                    "--json", "as_json", is_flag=True, help="Print JSON instead of a table."
                ),
            )
        ):
            command = option(command)
        return command

    return decorate


@click.command()
@_sums_options(("client", "route", "model", "key", "provider"))
def usage(config: str | None, since: str, by: str, as_csv: bool, as_json: bool) -> None:
    """Tokens relayed, summed per client, route, model, key or provider (whole pool).

    `missing` counts answers that carried no usage (their tokens are not in the sums).
    """
    _print_sums(config, since, by, as_csv, as_json, ())


@click.command("usage")
@click.argument("names", nargs=-1)
@_sums_options(("client", "route", "model", "key"))
def client_usage(
    names: tuple[str, ...], config: str | None, since: str, by: str, as_csv: bool, as_json: bool
) -> None:
    """The tokens of clients NAMES (default: every client), summed per client, route, model or
    upstream key.

    `missing` counts answers that carried no usage (their tokens are not in the sums).
    """
    _print_sums(config, since, by, as_csv, as_json, names)


def _print_sums(
    config: str | None, since: str, by: str, as_csv: bool, as_json: bool, names: tuple[str, ...]
) -> None:
    from llmgateway.store.token_usage import totals

    seconds = span_seconds(since)
    settings = load(config)
    grouped: By = by  # type: ignore[assignment]  # click.Choice checked it

    async def work(store: Store) -> None:
        found = await totals(store, time.time() - seconds, grouped, names)
        click.echo(render(found, grouped, as_csv=as_csv, as_json=as_json), nl=not as_csv)

    run_with_store(settings, work)


def render(found: list[Total], by: str, *, as_csv: bool = False, as_json: bool = False) -> str:
    """The sums as an aligned table (a total line last), CSV or JSON."""
    if as_json:
        return json.dumps([dataclasses.asdict(total) for total in found], indent=2)
    rows = [
        (t.name, t.requests, t.input, t.output, t.cached, t.reasoning, t.missing) for t in found
    ]
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow((by, *COLUMNS))
        writer.writerows(rows)
        return out.getvalue()
    if not rows:
        return "no token counts in that span (the gateways write them every few seconds)"
    sums = tuple(sum(int(row[i]) for row in rows) for i in range(1, 7))
    lines = [(by.upper(), *(c.upper() for c in COLUMNS))]
    lines += [(str(row[0]), *(f"{v:,}" for v in row[1:])) for row in rows]
    lines.append(("total", *(f"{v:,}" for v in sums)))
    widths = [max(len(line[i]) for line in lines) for i in range(7)]
    return "\n".join(
        "  ".join(
            value.ljust(width) if i == 0 else value.rjust(width)
            for i, (value, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )
