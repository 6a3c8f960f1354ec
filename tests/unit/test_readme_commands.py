"""The README's Commands table names every command the CLI has, each with every option."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from llmgateway.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"
SHARED = {"--help", "--env-file"}  # every command's; the text under the table says so


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """(`name sub`, command) for every command below `group`, groups left out."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def table_rows() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `llmgateway ")]


def test_every_command_and_option_is_in_the_commands_table() -> None:
    rows = table_rows()
    for name, command in commands(main):
        row = next((r for r in rows if r.startswith(f"| `llmgateway {name}")), None)
        assert row is not None, f"`llmgateway {name}` is not in the README's Commands table"
        usage = row.split("`")[1]
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                names = set(parameter.opts) - SHARED
                if names:
                    assert any(re.search(rf"{n}\b", usage) for n in names), (name, names)
