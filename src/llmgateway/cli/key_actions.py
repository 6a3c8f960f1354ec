"""`llmgateway keys disable|enable|reset|recheck`: act on the keys a filter selects.

Each takes the filter of `keys list` (`--provider`, `--model`, `--status`) and fingerprint
prefixes as arguments (a key is chosen when both select it); with neither, it refuses unless
`--all` is given. The keys are fixed when the command starts, as a bulk job (the console's bulk
actions are the same jobs), which the command runs itself in chunks (see
`llmgateway.store.job_runs`; should the command be killed, the Keeper finishes the job); each
is recorded in the audit log. The output is counts, never a secret.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from llmgateway.cli.keys import MIN_PREFIX, key_filter_options
from llmgateway.cli.startup import config_option, load, run_with_store
from llmgateway.records import KeyFilter

if TYPE_CHECKING:
    from llmgateway.store import Store
    from llmgateway.store.key_actions import Action, Progress

_DONE = {"disable": "disabled", "enable": "enabled", "reset": "reset", "recheck": "due now"}
_HEX = frozenset("0123456789abcdef")


def prefixes_given(fingerprints: tuple[str, ...]) -> tuple[str, ...]:
    """The fingerprint prefixes as given, lower-cased; a usage error for one that is not 4 to
    64 hex digits."""
    found = []
    for given in fingerprints:
        prefix = given.strip().lower()
        if not MIN_PREFIX <= len(prefix) <= 64 or not set(prefix) <= _HEX:
            raise click.UsageError(
                f"a FINGERPRINT is {MIN_PREFIX} to 64 hex digits (as in the log lines and "
                f"`keys list`), e.g. 1a2b3c4d; got one of {len(prefix)} characters"
            )
        found.append(prefix)
    return tuple(found)


def run_key_action(
    name: str,
    config: str | None,
    key_filter: KeyFilter,
    fingerprints: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    """Do the action `name` to the chosen keys and print what it matched and changed."""
    from llmgateway.store.job_runs import JobLostError, run_action
    from llmgateway.store.key_actions import Action, Chosen

    prefixes = prefixes_given(fingerprints)
    narrowed = key_filter.describe()
    if not prefixes and not narrowed and not everything:
        raise click.UsageError(
            f"`keys {name}` with no filter acts on every key: give FINGERPRINT prefixes, "
            "--provider, --model, --status, --status-code or --search, or --all to mean every key"
        )
    action = Action(name)
    chosen = Chosen(key_filter, prefixes)
    settings = load(config)
    done: Progress | None = None

    def progress(so_far: Progress) -> None:
        if not as_json and so_far.matched > 1000:  # a large set: say where it stands
            click.echo(f"… {so_far.matched} keys so far, {so_far.changed} changed", err=True)

    async def work(store: Store) -> None:
        nonlocal done
        try:
            done = await run_action(store, action, chosen, on_chunk=progress)
        except JobLostError as error:
            raise click.ClickException(str(error)) from None

    run_with_store(settings, work)
    assert done is not None
    _report(action, done, narrowed, prefixes, as_json, settings.gateway.refresh_interval_sec)


def _report(
    action: Action,
    done: Progress,
    narrowed: str,
    prefixes: tuple[str, ...],
    as_json: bool,
    refresh: float,
) -> None:
    if as_json:
        report = {
            "action": action.value,
            "filter": narrowed,
            "fingerprints": list(prefixes),
            "matched": done.matched,
            "changed": done.changed,
            "rows": done.rows,
        }
        click.echo(json.dumps(report))
        return
    if not done.matched:
        click.echo("no keys match")
        return
    unchanged = done.matched - done.changed
    line = f"{_DONE[action.value]}: {done.changed} of {done.matched} matching keys"
    if unchanged and action.value in ("disable", "enable"):
        line += f" ({unchanged} already {_DONE[action.value]})"
    click.echo(line)
    if done.changed and action.value != "recheck":
        click.echo(f"gateways apply it at their next refresh (within {refresh:g}s)")


def _action_command(name: str, summary: str) -> click.Command:
    @click.command(name, help=summary)
    @config_option
    @key_filter_options
    @click.argument("fingerprints", nargs=-1, metavar="[FINGERPRINT]...")
    @click.option("--all", "everything", is_flag=True, help="Every key, when nothing narrows.")
    @click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
    def command(
        config: str | None,
        key_filter: KeyFilter,
        fingerprints: tuple[str, ...],
        everything: bool,
        as_json: bool,
    ) -> None:
        run_key_action(name, config, key_filter, fingerprints, everything, as_json)

    return command


ACTIONS = (
    _action_command(
        "disable",
        "Take the chosen keys out of service: no gateway selects them (from its next refresh) "
        "and the Keeper stops probing them, until `keys enable`; file syncs keep the flag. "
        "FINGERPRINT: a prefix (4+ hex digits) of a key's fingerprint; give several, or the "
        "filter options, or --all.",
    ),
    _action_command(
        "enable",
        "Put keys `keys disable` took out back in service (gateways from their next refresh).",
    ),
    _action_command(
        "reset",
        "Clear the chosen rows' cooldown and failure streak: they are `untested` and "
        "selectable again from the gateways' next refresh, and due for a probe now.",
    ),
    _action_command(
        "recheck",
        "Make the chosen rows due first: the Keeper probes them before any other key, and "
        "the rows show the result once it lands.",
    ),
)
"""The commands, added to the `keys` group."""
