"""Lines worth reading: no terminal escape from any source, colours only on a terminal,
watchfiles' change lines at DEBUG, and paths shown safely."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import watchfiles

from llmgateway.config.settings import LoggingSettings
from llmgateway.observe import logs
from llmgateway.observe.access import PATH_SHOWN, shown_path

Configure = Callable[[str], Path]


@pytest.fixture
def configure(tmp_path: Path) -> Iterator[Configure]:
    """`configure(level)`: the process's logging at `level`, as JSON in a file (its path)."""

    def at(level: str) -> Path:
        folder = tmp_path / "logs"
        logs.configure(LoggingSettings(level=level, format="json", dir=folder), name="test")
        return folder / "test.log"

    yield at
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_escape_sequences_from_any_source_are_removed(configure: Configure) -> None:
    path = configure("INFO")
    noisy = logging.getLogger("some.library")
    noisy.info(
        "\x1b[31mred\x1b[0m and %s",
        "\x1b]0;a new title\x07plain",
        extra={"color_message": "\x1b[36m%d\x1b[0m", "detail": {"body": "\x1b[2Jcleared"}},
    )
    try:
        raise ValueError("\x1b[1mbold\x1b[0m")
    except ValueError:
        noisy.exception("failed")
    text = path.read_text()
    assert "\x1b" not in text
    assert "\\u001b" not in text
    first, second = read(path)
    assert first["event"] == "red and plain"
    assert "color_message" not in first
    assert first["detail"] == {"body": "cleared"}
    assert "ValueError: bold" in second["exception"]


def test_console_lines_are_coloured_only_on_a_terminal(tmp_path: Path) -> None:
    main, other = pty.openpty()
    try:
        with open(other, "w", closefd=False) as terminal:
            assert logs.coloured(terminal, {"TERM": "xterm"})
            assert not logs.coloured(terminal, {"TERM": "xterm", "NO_COLOR": ""})
            assert not logs.coloured(terminal, {"TERM": "dumb"})
    finally:
        os.close(main)
        os.close(other)
    with open(tmp_path / "file", "w") as file:
        assert not logs.coloured(file, {"TERM": "xterm"})
    read_end, write_end = os.pipe()
    with open(read_end, "rb"), open(write_end, "w") as pipe:
        assert not logs.coloured(pipe, {"TERM": "xterm"})


async def changed_once(folder: Path) -> None:
    """Watch `folder` with watchfiles until it reports a file written here."""

    async def watch() -> None:
        async for _ in watchfiles.awatch(folder, recursive=False, debounce=50, step=10):
            return

    task = asyncio.create_task(watch())
    # a change before the watcher started goes unseen: write until one is seen (20 s at most)
    for n in range(200):
        (folder / f"keys-{n}.txt").write_text(f"sk-{os.urandom(8).hex()}\n")
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            task.result()
            return
    task.cancel()
    raise AssertionError("watchfiles saw no change in 20 s")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_file_watch_changes_are_debug_lines(
    level: str, configure: Configure, tmp_path: Path
) -> None:
    path = configure(level)
    folder = tmp_path / "watched"
    folder.mkdir()
    await changed_once(folder)
    logging.getLogger("watchfiles.main").warning("a watchfiles warning stays one")
    lines = read(path)
    changes = [line for line in lines if "detected" in line["event"]]
    if level == "INFO":
        assert changes == []
    else:
        assert changes
        assert {line["level"] for line in changes} == {"debug"}
    warning = [line for line in lines if line["event"] == "a watchfiles warning stays one"]
    assert [line["level"] for line in warning] == ["warning"]


def test_an_info_line_of_watchfiles_becomes_debug(configure: Configure) -> None:
    path = configure("DEBUG")
    logging.getLogger("watchfiles.main").info("%d change%s detected", 3, "s")
    (line,) = read(path)
    assert (line["event"], line["level"]) == ("3 changes detected", "debug")


def test_paths_are_shown_escaped_and_cut() -> None:
    assert shown_path(b"/v1/chat/completions") == "/v1/chat/completions"
    assert shown_path(b"/v1/\x1b[31m\xff") == "/v1/\\x1b[31m\\xff"
    long = shown_path(b"/v1/" + b"a" * 1000)
    assert len(long) == PATH_SHOWN
    assert long.endswith("…")
