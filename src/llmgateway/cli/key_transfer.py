"""`llmgateway keys export|import`: keys out of the store with their secrets, and into a
provider's key folder.

`export` is the one command that writes secrets, on purpose: to a pipe, to a new 0600 file
(`--output`), or to a terminal only with `--to-terminal`. It logs one WARNING line saying how
many keys of which provider went where, never a key. `import` reads keys by the key files'
rules (`keyfiles.parse_keys`), writes the new ones to a new file of the provider's folder and
syncs that provider at once; it shows keys masked only.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

import click

from llmgateway.cli.keys import key_filter_options
from llmgateway.cli.startup import config_option, load, run_with_store, setup_logging
from llmgateway.private_files import private_opener
from llmgateway.records import KeyFilter

if TYPE_CHECKING:
    from llmgateway.keyfiles import ProviderSync
    from llmgateway.store import Store

log = logging.getLogger("llmgateway.keys")

CSV_COLUMNS = ("provider", "fingerprint", "status", "source", "key")


@click.command("export")
@config_option
@key_filter_options
@click.option(
    "--format",
    "form",
    type=click.Choice(["txt", "csv"]),
    default="txt",
    show_default=True,
    help="txt: one key a line (a key file); csv: provider, fingerprint, status, source, key.",
)
@click.option(
    "--output",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this new file (created 0600; an existing one is never replaced).",
)
@click.option(
    "--to-terminal",
    is_flag=True,
    help="Print the secrets even though standard output is a terminal.",
)
def keys_export(
    config: str | None, key_filter: KeyFilter, form: str, output: Path | None, to_terminal: bool
) -> None:
    """The active keys matching the filters, WITH THEIR SECRETS, in key order, streamed page by
    page. Refuses a terminal unless --to-terminal; logs one WARNING line (no secret)."""
    if output is None and not to_terminal and sys.stdout.isatty():
        raise click.UsageError(
            "standard output is a terminal: refusing to print secrets there; "
            "use --output FILE, pipe it (| gpg -c > keys.gpg), or --to-terminal"
        )
    settings = load(config)
    setup_logging(settings, "keys")
    if output is not None:
        try:
            target: IO[str] = open(  # noqa: SIM115 - closed below, removed when incomplete
                output, "x", encoding="utf-8", newline="", opener=private_opener
            )
        except FileExistsError:
            raise click.UsageError(f"{output} exists; choose a new file name") from None
        except OSError as exc:
            click.echo(f"cannot create {output}: {exc.strerror}", err=True)
            raise SystemExit(1) from None
    else:
        target = sys.stdout
    per_provider: Counter[str] = Counter()

    async def work(store: Store) -> None:
        from llmgateway.store.key_export import export_pages

        writer = csv.writer(target, lineterminator="\n")
        if form == "csv":
            writer.writerow(CSV_COLUMNS)
        async for page in export_pages(store, key_filter):
            if form == "csv":
                writer.writerows(
                    (k.provider, k.fingerprint, k.status, k.source or "", k.secret) for k in page
                )
            else:
                target.write("".join(f"{k.secret}\n" for k in page))
            target.flush()
            per_provider.update(k.provider for k in page)

    done = False
    try:
        run_with_store(settings, work)
        done = True
    finally:
        if output is not None:
            target.close()
            if not done:
                output.unlink(missing_ok=True)
    total = sum(per_provider.values())
    which = ", ".join(f"{name} ({n})" for name, n in sorted(per_provider.items()))
    if len(per_provider) < 2:  # one provider (or none): its name alone
        which = next(iter(per_provider), key_filter.provider or "any")
    log.warning(
        "exported %d keys of provider %s (filter %s) to %s",
        total,
        which,
        key_filter.describe() or "none",
        output if output is not None else "standard output",
    )


@click.command("import")
@config_option
@click.argument("provider")
@click.argument("source", metavar="[FILE|-]", default="-")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead.")
def keys_import(config: str | None, provider: str, source: str, as_json: bool) -> None:
    """Add the keys in FILE (default: standard input) to PROVIDER: those not yet in its
    keys_path folder go to a new file there (imported-YYYYMMDD-HHMMSS.txt, 0600), then the
    provider is synced so they are in the store at once. Keys are shown masked only."""
    from llmgateway.key_import import (
        FolderNotWritableError,
        ImportTooLargeError,
        check_writable,
        read_bounded,
        write_key_file,
    )
    from llmgateway.keyfiles import parse_keys, read_folder, sync_provider

    settings = load(config)
    if provider not in settings.providers:
        known = ", ".join(sorted(settings.providers))
        raise click.UsageError(f"no provider {provider!r} in the config (providers: {known})")
    setup_logging(settings, "keys")
    name = "<stdin>" if source == "-" else source
    try:
        if source == "-":
            data = read_bounded(sys.stdin.buffer, name)
        else:
            with Path(source).open("rb") as file:
                data = read_bounded(file, name)
        text = data.decode("utf-8")
    except OSError as exc:
        _fail(f"cannot read {name}: {exc.strerror}")
    except ImportTooLargeError as exc:
        _fail(f"nothing imported: {exc}")
    except UnicodeDecodeError as exc:
        _fail(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8")
    parsed = parse_keys(text, name)
    folder = settings.providers[provider].keys_path
    present = read_folder(folder, parse_keys).values
    new = [key for key in parsed.sources if key not in present]  # input order
    written: Path | None = None
    if new:
        try:
            check_writable(folder)
        except FolderNotWritableError as exc:
            _fail(f"nothing imported: {exc}")
        header = f"{len(new)} keys imported by `llmgateway keys import` from {name}"
        try:
            written = write_key_file(folder, new, header, time.time())
        except OSError as exc:
            _fail(f"nothing imported: cannot write a file in {folder}: {exc.strerror}")
    synced: ProviderSync | None = None

    async def work(store: Store) -> None:
        nonlocal synced
        synced = await sync_provider(settings, store, provider)

    if written is not None:
        run_with_store(settings, work)
    summary = {
        "provider": provider,
        "read": len(parsed.values),
        "invalid": parsed.rejected,
        "invalid_tokens": [str(problem) for problem in parsed.problems],
        "duplicates": len(parsed.values) - len(new),
        "added": len(new),
        "file": None if written is None else str(written),
        "active_in_store": None if synced is None or synced.keys is None else synced.keys.active,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for problem in parsed.problems:
        click.echo(f"{problem}", err=True)
    line = (
        f"{provider}: read {len(parsed.values)} keys, {len(new)} new, "
        f"{len(parsed.values) - len(new)} already in {folder}, {parsed.rejected} invalid "
        "tokens skipped"
    )
    click.echo(line)
    if synced is not None and synced.keys is None:
        click.echo(f"wrote {written}; {provider} is disabled: not synced (enable it to use them)")
    elif written is not None:
        click.echo(f"wrote {written}; synced: {summary['active_in_store']} active keys in store")


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    raise SystemExit(1)
