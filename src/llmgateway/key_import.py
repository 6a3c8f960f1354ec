"""A new key file in a provider's `keys_path` folder, for `llmgateway keys import`.

The folder stays the truth: imported keys go into a file of their own
(`imported-YYYYMMDD-HHMMSS.txt`, mode 0600), written whole to a hidden temporary file in the
same folder (which the sync skips) and then renamed into place, so a sync never reads half of
it. A folder that cannot take a file (a read-only mount, a Kubernetes secret mount, no write
permission) is refused before anything is written, with what to do instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from llmgateway.private_files import FILE_MODE

PREFIX = "imported-"

MAX_IMPORT_BYTES = 64 * 1024 * 1024
"""The most input one import reads (about a million keys): more is refused, nothing written."""


class ImportTooLargeError(Exception):
    """The input is over `MAX_IMPORT_BYTES`; the message says what to do."""


def read_bounded(stream: BinaryIO, name: str, limit: int = MAX_IMPORT_BYTES) -> bytes:
    """All of `stream`, or `ImportTooLargeError` when it holds more than `limit` bytes (one
    byte past the limit is read to tell, never the rest)."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ImportTooLargeError(
            f"{name}: more than {limit // (1024 * 1024)} MiB; split it and import the parts"
        )
    return data


class FolderNotWritableError(Exception):
    """The key folder cannot take a new file; the message says why and what to do."""


def check_writable(folder: Path) -> None:
    """Raise `FolderNotWritableError` unless a file can be created in `folder`: a Kubernetes
    secret mount (a `..data` link) is refused outright, then a real write is tried."""
    if not folder.is_dir():
        raise FolderNotWritableError(
            f"{folder}: not a folder (missing?); create it, or fix keys_path in the config"
        )
    if (folder / "..data").is_symlink():
        raise FolderNotWritableError(
            f"{folder} is a Kubernetes secret (or ConfigMap) mount, which is read-only and "
            "rewritten by Kubernetes; add the keys to the secret itself (kubectl edit secret …) "
            "and the next sync picks them up"
        )
    probe = folder / f".{PREFIX}probe-{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise FolderNotWritableError(_why(folder, exc)) from None
    os.close(fd)
    probe.unlink()


def _why(folder: Path, exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return (
            f"{folder} is on a read-only file system; add the keys where that mount comes "
            "from (or mount the folder read-write); the Keeper's next sync (or "
            "`llmgateway db sync`) picks them up"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{folder} is not writable by this user (uid {os.getuid()}); run the import as "
            "the folder's owner, or add the keys to a file there by hand"
        )
    return f"cannot create a file in {folder}: {exc.strerror}"


def write_key_file(folder: Path, values: Iterable[str], header: str, now: float) -> Path:
    """Write `values` one per line after the `# header` comment into a new file of `folder`,
    atomically (temporary file, fsync, rename); its path. Never replaces an existing file."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    temp = folder / f".{PREFIX}{stamp}-{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(f"# {header}\n")
            file.writelines(f"{value}\n" for value in values)
            file.flush()
            os.fsync(file.fileno())
        for attempt in range(1, 1000):
            target = folder / f"{PREFIX}{stamp}{'' if attempt == 1 else f'-{attempt}'}.txt"
            try:
                os.link(temp, target)  # fails if the name is taken: never replaces a file
            except FileExistsError:
                continue
            return target
        raise FileExistsError(errno.EEXIST, "no free file name", str(folder))
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
