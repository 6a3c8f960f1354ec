"""The compose files as Podman's compose provider reads them: podman-compose (a dev
dependency) with Debian's `podman`, in `--dry-run`, prints every `podman` command that `podman
compose -f … -f … up -d` would run, without starting anything. With the Podman file the
gateway and the worker run `--userns keep-id:uid=1000,gid=1000`; without it no user namespace
is asked for (what Docker gets); the keys and config are mounted read-only, the gateway's
health check needs a usable key, and `serve`'s store is the named volume. Skipped without the
`podman` binary (failed under LLMGATEWAY_REQUIRE_PODMAN=1).

Running the containers is not tested: that needs the images from a registry and a container
runtime this machine does not give."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEEP_ID = "--userns keep-id:uid=1000,gid=1000"


def require_podman() -> None:
    if shutil.which("podman") is not None:
        return
    problem = "no podman binary (Debian: apt-get install podman)"
    if os.environ.get("LLMGATEWAY_REQUIRE_PODMAN") == "1":
        pytest.fail(f"{problem}; LLMGATEWAY_REQUIRE_PODMAN=1 requires it", pytrace=False)
    pytest.skip(problem)


def planned(project: Path, *files: str) -> dict[str, str]:
    """`podman create` of each service (by name) that `up -d` would run, and the `volume`
    commands under the name `volumes`."""
    for name in files:
        shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / "examples" / ".env.example", project / ".env")
    (project / "config").mkdir(exist_ok=True)
    (project / "keys").mkdir(exist_ok=True)
    chosen = [arg for name in files for arg in ("-f", name)]
    command = ["podman_compose", "--verbose", *chosen, "--dry-run", "up", "-d", "--no-build"]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, str] = {"volumes": ""}
    for line in done.stderr.splitlines():
        created = re.search(r"podman create --name=\S+?_(\w+)_1 (.*)", line)
        if created:
            found[created.group(1)] = created.group(2)
        elif "podman volume" in line:
            found["volumes"] += line + "\n"
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    require_podman()
    return tmp_path


def test_with_the_podman_file_your_user_becomes_the_images(project: Path) -> None:
    run = planned(project, "docker-compose.yml", "docker-compose.podman.yml")
    assert {"database", "gateway", "worker"} <= set(run)
    for service in ("gateway", "worker"):
        assert KEEP_ID in run[service], service
        assert f"-v {project}/keys:/app/keys:z,ro" in run[service]
        assert f"-v {project}/config:/app/config:z,ro" in run[service]
    assert "--userns" not in run["database"], "the database keeps its image's own users"
    assert "LLMGATEWAY_READY_REQUIRES_KEYS=true" in run["gateway"]
    assert "/readyz" in run["gateway"]
    assert "LLMGATEWAY_READY_REQUIRES_KEYS" not in run["worker"]
    assert "volume create llmgateway_pgdata" in run["volumes"]


def test_without_it_no_user_namespace_is_asked_for(project: Path) -> None:
    run = planned(project, "docker-compose.yml")
    for service in ("database", "gateway", "worker"):
        assert "--userns" not in run[service], service


def test_serve_keeps_its_store_in_the_named_volume(project: Path) -> None:
    run = planned(project, "docker-compose.serve.yml", "docker-compose.serve.podman.yml")
    assert KEEP_ID in run["serve"]
    assert "--mount type=volume,source=llmgateway_data,destination=/app/data" in run["serve"]
    assert "volume create llmgateway_data" in run["volumes"]
    assert "LLMGATEWAY_DATABASE_URL=sqlite:////app/data/llmgateway.db" in run["serve"]
