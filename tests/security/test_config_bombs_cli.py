"""Config bombs through the real CLI: `check-config` on a billion-laughs file and on an endless
file refuses them with exit 2, about as fast as it checks a good file and without its memory
growing (each child's own peak RSS, from wait4)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import PROVIDER_YAML, billion_laughs

pytestmark = pytest.mark.security

TIMEOUT_SEC = 30.0


@dataclass(frozen=True)
class Finished:
    code: int
    stderr: str
    seconds: float
    peak_rss_mib: float


def run_measured(*args: str) -> Finished:
    """Run `python -m llmgateway ARGS`; its exit code, stderr, wall time and own peak RSS.
    Killed after `TIMEOUT_SEC` (then the code is -9)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmgateway", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killer = threading.Timer(TIMEOUT_SEC, process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)  # stderr is a line: the pipe never fills
    finally:
        killer.cancel()
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    process.stderr.close()
    return Finished(process.returncode, stderr, seconds, usage.ru_maxrss / 1024)


def test_check_config_refuses_a_billion_laughs_at_once(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(PROVIDER_YAML)
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(PROVIDER_YAML + billion_laughs())
    baseline = run_measured("check-config", str(good))
    assert baseline.code == 0, baseline.stderr
    refused = run_measured("check-config", str(bomb))
    assert refused.code == 2, refused.stderr
    assert refused.stderr.startswith(f"{bomb}: YAML aliases would expand the config by ")
    assert "Traceback" not in refused.stderr
    # the same work as a good file, give or take: well within a second on top of start-up
    assert refused.seconds < baseline.seconds + 1.0, (refused.seconds, baseline.seconds)
    assert refused.peak_rss_mib < baseline.peak_rss_mib + 20, (refused, baseline)


def test_check_config_reads_no_more_than_a_mebibyte_of_an_endless_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(PROVIDER_YAML)
    # a child's peak RSS may include its parent's pages from before exec: compare, don't bound
    baseline = run_measured("check-config", str(good))
    refused = run_measured("check-config", "/dev/zero")
    assert refused.code == 2, refused.stderr
    assert refused.stderr == (
        "/dev/zero: the config file is larger than 1 MiB: refused unread "
        "(a config file is a few kilobytes; check that the path names the config file)\n"
    )
    assert refused.peak_rss_mib < baseline.peak_rss_mib + 20, (refused, baseline)


def test_an_endless_environment_file_is_refused_unread(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(PROVIDER_YAML)
    baseline = run_measured("check-config", str(good))
    refused = run_measured("--env-file", "/dev/zero", "check-config", str(good))
    assert refused.code == 2, refused.stderr
    assert refused.stderr == (
        "/dev/zero: the environment file is larger than 1 MiB: refused unread "
        "(an environment file is small)\n"
    )
    assert refused.peak_rss_mib < baseline.peak_rss_mib + 20, (refused, baseline)


def test_an_environment_file_of_one_endless_line_is_refused_unread(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(PROVIDER_YAML)
    bomb = tmp_path / "bomb.env"
    bomb.write_bytes(b"SECRET_TOKEN=" + b"x" * (2 * 1024 * 1024))  # one 2 MiB line, no newline
    refused = run_measured("--env-file", str(bomb), "check-config", str(good))
    assert refused.code == 2, refused.stderr
    assert refused.stderr.startswith(f"{bomb}: the environment file is larger than 1 MiB")
    assert "xxxx" not in refused.stderr
