"""Every compose file validates against the Compose Specification's JSON schema (the one
Docker Compose v2 and Podman's compose read; vendored by check-jsonschema, a dev dependency),
as written and merged with its Podman file; Podman-only settings stay out of the files Docker
reads; the Podman files map your user to the image's; and `docker-compose.serve.yml` runs
`serve` with its SQLite store in a named volume and a health check that needs a usable key.

No container engine runs here: what Docker or Podman would do beyond the schema and the
settings our own code reads is not tested."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from tests.compose import container_env, merged, read_env, resolved_compose

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "examples" / ".env.example"
ORIGINAL_ENV = ROOT / "tests" / "upgrade" / "original_configs" / "original.env"
CONFIG = ROOT / "config" / "providers.yaml"
MAIN = ROOT / "docker-compose.yml"
SERVE = ROOT / "docker-compose.serve.yml"
PODMAN = {MAIN: ROOT / "docker-compose.podman.yml", SERVE: ROOT / "docker-compose.serve.podman.yml"}
FILES = [*PODMAN, *PODMAN.values()]


@cache
def schema() -> dict[str, Any]:
    """compose-spec.json as check-jsonschema ships it, checked against its recorded digest."""
    vendor = "check_jsonschema/builtin_schemas/vendor"
    package = distribution("check-jsonschema")
    text = Path(str(package.locate_file(f"{vendor}/compose-spec.json"))).read_bytes()
    digest = Path(str(package.locate_file(f"{vendor}/sha256/compose-spec.sha256"))).read_text()
    assert hashlib.sha256(text).hexdigest() == digest.strip()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def problems(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def resolved(path: Path, env: Path = ENV_EXAMPLE) -> dict[str, Any]:
    unset: set[str] = set()
    data = resolved_compose(read_env(env), unset, path)
    assert not unset, f"{path.name} reads without a default: {sorted(unset)}"
    return data


def image_uid() -> str:
    found = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("env", [ENV_EXAMPLE, ORIGINAL_ENV], ids=["ours", "original"])
def test_each_compose_file_follows_the_compose_spec(path: Path, env: Path) -> None:
    assert problems(resolved(path, env)) == []


@pytest.mark.parametrize("base", list(PODMAN), ids=lambda p: p.name)
def test_each_file_with_its_podman_file_follows_the_compose_spec(base: Path) -> None:
    together = merged(resolved(base), resolved(PODMAN[base]))
    assert problems(together) == []
    for name, service in resolved(PODMAN[base])["services"].items():
        assert name in resolved(base)["services"], f"{PODMAN[base].name} names no new service"
        assert set(service) == {"userns_mode"}, "only what Docker cannot take"
        uid = image_uid()
        assert together["services"][name]["userns_mode"] == f"keep-id:uid={uid},gid={uid}"


def test_the_schema_check_finds_mistakes() -> None:
    """So the passes above mean something: the validator refuses what Compose refuses."""
    document = resolved(MAIN)
    broken = copy.deepcopy(document)
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "10s"
    assert any("intervall" in p for p in problems(broken))
    broken = copy.deepcopy(document)
    broken["services"]["gateway"]["restart"] = ["unless-stopped"]
    assert problems(broken)
    broken = copy.deepcopy(document)
    broken["volumes"]["pgdata"]["nmae"] = "x"
    assert problems(broken)


@pytest.mark.parametrize("path", list(PODMAN), ids=lambda p: p.name)
def test_the_files_docker_reads_hold_no_podman_only_setting(path: Path) -> None:
    """Docker's engine takes userns_mode "host" only (Compose v1 refused keep-id outright)."""
    for name, service in resolved(path)["services"].items():
        assert service.get("userns_mode", "host") == "host", name


def test_the_documented_podman_commands_name_the_files() -> None:
    for base, podman in PODMAN.items():
        command = f"podman compose -f {base.name} -f {podman.name} up -d"
        assert command in base.read_text(), base.name
        assert command in podman.read_text(), podman.name
        assert command in (ROOT / "README.md").read_text(), command


# -- docker-compose.serve.yml: one container, SQLite in a named volume ----------------------


def serve_service() -> dict[str, Any]:
    service: dict[str, Any] = resolved(SERVE)["services"]["serve"]
    return service


def test_serve_runs_a_real_command_with_its_store_in_a_named_volume() -> None:
    document = resolved(SERVE)
    service = serve_service()
    command = service["command"]
    assert CliRunner().invoke(main, [*command, "--help"]).exit_code == 0
    assert command[0] == "serve"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    volume = mounts["/app/data"]
    assert volume in document["volumes"], "a named volume, not a folder of the host"
    assert document["volumes"][volume]["name"] == "llmgateway_data"
    assert mounts["/app/keys"] == "./keys"
    assert mounts["/app/config"] == "./config"


def test_serve_stores_in_the_volume_and_checks_for_usable_keys() -> None:
    dotenv = read_env(ENV_EXAMPLE)
    env = container_env(serve_service(), dotenv)
    settings = load_settings(CONFIG, environ=env)
    assert settings.database.async_url == "sqlite+aiosqlite:////app/data/llmgateway.db"
    assert settings.gateway.ready_requires_keys is True
    test = serve_service()["healthcheck"]["test"]
    assert "http://127.0.0.1:55300/readyz" in test[-1]


@pytest.mark.parametrize(("service", "requires"), [("gateway", True), ("worker", False)])
def test_the_composed_gateway_is_healthy_only_with_a_usable_key(
    service: str, requires: bool
) -> None:
    dotenv = read_env(ENV_EXAMPLE)
    env = container_env(resolved(MAIN)["services"][service], dotenv)
    assert load_settings(CONFIG, environ=env).gateway.ready_requires_keys is requires
    if service == "gateway":
        assert "/readyz" in resolved(MAIN)["services"]["gateway"]["healthcheck"]["test"][-1]


def test_ready_requires_keys_is_true_or_false_only(tmp_path: Path) -> None:
    from llmgateway.config.problems import ConfigError

    for written, expected in (("true", True), ("false", False), ("${READY:-true}", True)):
        path = tmp_path / "c.yaml"
        text = CONFIG.read_text().replace(
            "ready_requires_keys: ${LLMGATEWAY_READY_REQUIRES_KEYS:-false}",
            f"ready_requires_keys: {written}",
        )
        path.write_text(text)
        settings = load_settings(path, environ={})
        assert settings.gateway.ready_requires_keys is expected
    for wrong in ('"yes"', "1", '"true"', "on_keys"):
        path.write_text(
            CONFIG.read_text().replace(
                "ready_requires_keys: ${LLMGATEWAY_READY_REQUIRES_KEYS:-false}",
                f"ready_requires_keys: {wrong}",
            )
        )
        with pytest.raises(ConfigError) as caught:
            load_settings(path, environ={})
        assert "gateway.ready_requires_keys" in str(caught.value), wrong


def test_yaml_anchors_resolve_as_compose_resolves_them() -> None:
    """The `x-llmgateway` anchor and `<<` merges (which Compose supports) give the gateway and
    the worker the database environment; the schema sees the merged services."""
    raw = yaml.safe_load(MAIN.read_text())
    for name in ("gateway", "worker"):
        assert "PGPASSWORD" in raw["services"][name]["environment"]
