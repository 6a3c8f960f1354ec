"""Files that hold secrets (the SQLite store with every key, the log files) are created readable
by their owner only (0600), in folders we create owner-only (0700).

Only what llmgateway creates is touched: an existing file or folder keeps its mode (the owner
chose it), and the process umask is left alone (it can only take permissions away).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_private_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each new one with mode 0700."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            path.mkdir(mode=FOLDER_MODE)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 (and its missing folders 0700), unless it exists."""
    make_private_folder(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))


def private_opener(path: str, flags: int) -> int:
    """An `opener` for `open()`: a file it creates gets mode 0600."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
