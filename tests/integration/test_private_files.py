"""Files holding secrets are private: the SQLite store (with its -wal and -shm) and the log files
(rotated ones too) are created 0600, the folders created for them 0700; existing folders keep
their mode and the process umask is left as it was. Checked with `stat` after real writes."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from llmgateway.config.settings import LoggingSettings
from llmgateway.observe.logs import configure
from llmgateway.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common umask 022, under which a plain open() makes 0644 files and 0755 folders."""
    before = os.umask(0o022)
    yield
    assert os.umask(before) == 0o022, "the code under test changed the umask"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


async def test_the_sqlite_store_its_wal_and_shm_are_0600_in_0700_folders(tmp_path: Path) -> None:
    database = tmp_path / "state" / "data" / "llmgateway.db"
    async with await Store.open(f"sqlite:///{database}") as store:
        await store.upgrade()
        await store.request_breaker_reset("openai")  # a write: the WAL holds it
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        assert all(path.exists() for path in files)
        assert {path.name: oct(mode(path)) for path in files} == {
            path.name: oct(0o600) for path in files
        }
    assert oct(mode(tmp_path / "state")) == oct(0o700)
    assert oct(mode(tmp_path / "state" / "data")) == oct(0o700)


async def test_an_existing_folder_and_file_keep_their_modes(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    database = folder / "llmgateway.db"
    async with await Store.open(f"sqlite:///{database}") as store:
        await store.upgrade()
    assert oct(mode(folder)) == oct(0o750)
    database.chmod(0o640)  # the owner's choice for an existing file is kept too
    async with await Store.open(f"sqlite:///{database}") as store:
        await store.request_breaker_reset("openai")
    assert oct(mode(database)) == oct(0o640)


def test_log_files_and_rotated_ones_are_0600_in_a_0700_folder(
    tmp_path: Path, restore_logging: None
) -> None:
    folder = tmp_path / "var" / "logs"
    configure(LoggingSettings(format="json", dir=folder), name="gateway")
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    handler.maxBytes = 2_000  # roll over after a few lines instead of 20 MB
    log = logging.getLogger("llmgateway.test")
    for n in range(40):
        log.warning("line %d of the private log", n)
    handler.flush()
    written = sorted(p.name for p in folder.iterdir())
    assert written[:3] == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    assert {name: oct(mode(folder / name)) for name in written} == {
        name: oct(0o600) for name in written
    }
    assert oct(mode(folder)) == oct(0o700)
    assert oct(mode(tmp_path / "var")) == oct(0o700)
    assert "line 39 of the private log" in (folder / "gateway.log").read_text()
