"""The deployment files agree with the CLI and the config (no container engine is needed):
docker-compose.yml parses, its commands are real commands with valid options, its ports,
health checks, env names and mounted paths match, it resolves (as Compose interpolates it,
tests/compose.py) with our examples/.env.example and with the original llmGateway's `.env`, and
the gateway's config then reaches its database; the Dockerfile is multi-stage, locked,
non-root, with `llmgateway` as its entrypoint."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from tests.compose import ComposeError, container_env, read_env, resolved_compose

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "examples" / ".env.example"
CONFIG = ROOT / "config" / "providers.yaml"
ORIGINAL = ROOT / "tests" / "upgrade" / "original_configs"
ORIGINAL_ENV = ORIGINAL / "original.env"
OURS = ("gateway", "worker")


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml resolved as Compose would with `env` (default: our .env.example);
    every variable it reads has a default or is required."""
    unset: set[str] = set()
    data = resolved_compose(env_example() if env is None else env, unset)
    assert not unset, f"read without a default: {sorted(unset)}"
    return data


def env_example() -> dict[str, str]:
    return read_env(ENV_EXAMPLE)


def documented_in_env_example() -> set[str]:
    """The names .env.example sets or shows commented out (`# NAME=default`)."""
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "the image has python, not curl"
    found = re.search(r"urlopen\('(http://[^']+)'", test[3])
    assert found, test
    return found.group(1)


def test_compose_has_the_original_services_and_keeps_the_data_volume() -> None:
    resolved = compose()
    services = resolved["services"]
    assert set(services) == {"database", "gateway", "worker"}, "the original's service names"
    database = services["database"]
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    assert database["networks"]["default"]["aliases"] == ["postgres"], "its name before"
    named = database["volumes"][0].split(":")[0]
    assert resolved["volumes"][named]["name"] == "llmgateway_pgdata", "the volume it always had"
    for name in OURS:
        assert services[name]["depends_on"]["database"]["condition"] == "service_healthy"
        assert "userns_mode" not in services[name], "Docker refuses keep-id: see the Podman file"
        assert services[name]["env_file"] == ".env"


@pytest.mark.parametrize("name", OURS)
def test_each_command_is_a_real_command_with_valid_options(name: str) -> None:
    command = compose()["services"][name]["command"]
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: main {command[0]}")


def test_gateway_port_mapping_and_healthcheck_match_its_command() -> None:
    gateway = compose()["services"]["gateway"]
    command = gateway["command"]
    assert command[:1] == ["gateway"]
    assert option(command, "--host") == "0.0.0.0"
    port = option(command, "--port")
    assert [mapping.rsplit(":", 1)[1] for mapping in gateway["ports"]] == [port]
    url = healthcheck_url(gateway)
    assert url in (f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/readyz")


def service_env(service: str, dotenv: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `service`'s container with `dotenv` as .env (default ours)."""
    dotenv = env_example() if dotenv is None else dotenv
    return container_env(compose(dotenv)["services"][service], dotenv)


def settings_as_compose_runs_them(service: str, config: Path = CONFIG) -> Any:
    return load_settings(config, environ=service_env(service))


def test_worker_healthcheck_hits_its_metrics_port() -> None:
    settings = settings_as_compose_runs_them("worker")
    worker = compose()["services"]["worker"]
    assert settings.worker.metrics_host == "0.0.0.0"
    assert healthcheck_url(worker) == f"http://127.0.0.1:{settings.worker.metrics_port}/healthz"
    assert str(settings.worker.metrics_port) in worker["expose"]
    assert settings.database.async_url == "postgresql+asyncpg://llmgateway@database:5432/llmgateway"


def test_every_env_name_of_the_config_is_in_env_example() -> None:
    settings_text = "\n".join(line.partition("#")[0] for line in CONFIG.read_text().splitlines())
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", settings_text))
    assert used, "the config reads the environment"
    known = set(env_example()) | set(compose()["services"]["gateway"]["environment"])
    assert used <= known, f"missing from examples/.env.example: {sorted(used - known)}"
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert interpolated <= documented_in_env_example(), interpolated - documented_in_env_example()


def test_mounts_put_config_and_keys_where_the_config_looks() -> None:
    settings = settings_as_compose_runs_them("gateway")
    gateway = compose()["services"]["gateway"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in gateway["volumes"]}
    config_in_container = Path(gateway["environment"]["LLMGATEWAY_CONFIG"])
    assert mounts[str(config_in_container.parent)] == "./" + CONFIG.parent.name
    workdir = re.findall(r"^WORKDIR (\S+)", DOCKERFILE.read_text(), re.MULTILINE)[-1]
    for provider in settings.providers.values():
        in_container = Path(workdir) / provider.keys_path
        assert any(in_container.is_relative_to(target) for target in mounts), in_container


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_is_multi_stage_locked_and_non_root() -> None:
    steps = dockerfile_instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) >= 2
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    uv_image = next(rest for word, rest in steps if word == "COPY" and "astral-sh/uv" in rest)
    pinned = re.search(r"UV_VERSION=(\S+)", (ROOT / "dev").read_text())
    assert pinned is not None
    assert f"uv:{pinned.group(1)} " in uv_image, "the same uv as ./dev"
    users = [rest for word, rest in steps if word == "USER"]
    assert users
    assert users[-1] not in ("root", "0")


def test_dockerfile_entrypoint_and_cmd_are_a_real_command() -> None:
    steps = dict(dockerfile_instructions())
    assert json.loads(steps["ENTRYPOINT"]) == ["llmgateway"]
    command = json.loads(steps["CMD"])
    assert CliRunner().invoke(main, [*command, "--help"]).exit_code == 0
    port = option(command, "--port")
    assert f":{port}/healthz" in steps["HEALTHCHECK"]
    assert port in shlex.split(steps["EXPOSE"])


def test_env_example_placeholders_stop_the_composed_gateway() -> None:
    """An unfilled copy of .env.example must fail loudly: compose binds 0.0.0.0, and every
    token it leaves in place is a placeholder the gateway refuses there."""
    from llmgateway.config.weak_tokens import is_loopback, weak_tokens

    settings = settings_as_compose_runs_them("gateway")
    command = compose()["services"]["gateway"]["command"]
    assert not is_loopback(option(command, "--host") or "")
    weak = dict(weak_tokens(settings))
    assert weak == {
        f"providers.{name}.access_control.gateway_access_token": "a placeholder token"
        for name in settings.providers
    }
    header = "".join(line for line in COMPOSE.read_text().splitlines() if line.startswith("#"))
    assert "fill in" in header
    assert "refuses to start" in header


# -- the original llmGateway's .env, and ours, in the same compose file --------------------------

ENVS = {"ours": ENV_EXAMPLE, "original": ORIGINAL_ENV}


def the_env(which: str) -> dict[str, str]:
    return read_env(ENVS[which])


@pytest.mark.parametrize("which", sorted(ENVS))
def test_the_database_is_created_with_the_env_files_db_variables(which: str) -> None:
    dotenv = the_env(which)
    database = compose(dotenv)["services"]["database"]["environment"]
    assert database["POSTGRES_PASSWORD"] == dotenv["DB_PASSWORD"]
    assert database["POSTGRES_USER"] == dotenv.get("DB_USER", "llmgateway")
    assert database["POSTGRES_DB"] == dotenv.get("DB_NAME", "llmgateway")


@pytest.mark.parametrize("service", OURS)
def test_with_the_original_env_its_own_config_reaches_the_database(service: str) -> None:
    dotenv = the_env("original")
    env = service_env(service, dotenv)
    assert env["DB_HOST"] == "database", "the .env's inline comment is not part of the value"
    for name in ("full_config.yaml", "minimal_config.yaml"):
        settings = load_settings(ORIGINAL / name, environ=env)
        password = quote(dotenv["DB_PASSWORD"], safe="")
        assert settings.database.async_url == (
            f"postgresql+asyncpg://llm_gateway:{password}@database:5432/llmgateway"
        )


@pytest.mark.parametrize("which", sorted(ENVS))
def test_our_config_reaches_the_database_with_either_env(which: str) -> None:
    """Ours reads LLMGATEWAY_DATABASE_URL, without the password (PGPASSWORD carries it)."""
    dotenv = the_env(which)
    env = service_env("gateway", dotenv)
    user = dotenv.get("DB_USER", "llmgateway")
    settings = load_settings(CONFIG, environ=env)
    assert settings.database.async_url == (
        f"postgresql+asyncpg://{user}@database:5432/{dotenv.get('DB_NAME', 'llmgateway')}"
    )
    assert env["PGPASSWORD"] == dotenv["DB_PASSWORD"]
    assert dotenv["DB_PASSWORD"] not in settings.database.async_url


def test_an_env_without_db_password_is_refused_by_compose() -> None:
    older = {k: v for k, v in env_example().items() if k != "DB_PASSWORD"}
    older["POSTGRES_PASSWORD"] = "our-env-before-issue-15"
    with pytest.raises(ComposeError) as caught:
        resolved_compose(older)
    assert str(caught.value) == (
        "required variable DB_PASSWORD is missing a value: set DB_PASSWORD in .env "
        "(our .env called it POSTGRES_PASSWORD before)"
    )


def test_the_original_volume_and_image_can_be_named() -> None:
    dotenv = the_env("original") | {
        "LLMGATEWAY_PG_VOLUME": "llmgateway_llmgateway_pg_data",
        "LLMGATEWAY_POSTGRES_IMAGE": "docker.io/library/postgres:18-alpine",
    }
    resolved = compose(dotenv)
    assert resolved["volumes"]["pgdata"]["name"] == "llmgateway_llmgateway_pg_data"
    assert resolved["services"]["database"]["image"] == "docker.io/library/postgres:18-alpine"


@pytest.mark.parametrize(
    ("which", "config"),
    [
        ("original", ORIGINAL / "full_config.yaml"),
        ("original", CONFIG),
        ("ours", CONFIG),
    ],
)
def test_check_config_passes_in_the_composed_gateway(which: str, config: Path) -> None:
    """The real CLI with exactly the gateway container's environment."""
    env = service_env("gateway", the_env(which))
    base = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "llmgateway", "--env-file", "none", "check-config", str(config)],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "database: postgresql" in done.stdout
