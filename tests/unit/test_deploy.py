"""The deployment files agree with the CLI and the config (no container engine is needed):
docker-compose.yml parses, its commands are real commands with valid options, its ports,
health checks, env names and mounted paths match, and the Dockerfile is multi-stage, locked,
non-root, with `llmgateway` as its entrypoint."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "examples" / ".env.example"
CONFIG = ROOT / "config" / "providers.yaml"
OURS = ("gateway", "worker")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "the image has python, not curl"
    found = re.search(r"urlopen\('(http://[^']+)'", test[3])
    assert found, test
    return found.group(1)


def test_compose_parses_with_the_three_services() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "gateway", "worker"}
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    named = postgres["volumes"][0].split(":")[0]
    assert named in compose()["volumes"], "postgres keeps its data in a named volume"
    for name in OURS:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["userns_mode"] == "keep-id"  # rootless Podman
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


def settings_as_compose_runs_them(service: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in env_example().items():
        monkeypatch.setenv(name, value)
    for name, value in compose()["services"][service]["environment"].items():
        monkeypatch.setenv(
            name, value.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", "pw")
        )
    return load_settings(CONFIG)


def test_worker_healthcheck_hits_its_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_as_compose_runs_them("worker", monkeypatch)
    worker = compose()["services"]["worker"]
    assert settings.worker.metrics_host == "0.0.0.0"
    assert healthcheck_url(worker) == f"http://127.0.0.1:{settings.worker.metrics_port}/healthz"
    assert str(settings.worker.metrics_port) in worker["expose"]
    assert settings.database.backend == "postgresql"
    assert settings.database.async_url.endswith("@postgres:5432/llmgateway")


def test_every_env_name_of_the_config_is_in_env_example() -> None:
    settings_text = "\n".join(line.partition("#")[0] for line in CONFIG.read_text().splitlines())
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", settings_text))
    assert used, "the config reads the environment"
    known = set(env_example()) | set(compose()["services"]["gateway"]["environment"])
    assert used <= known, f"missing from examples/.env.example: {sorted(used - known)}"
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert interpolated <= set(env_example())


def test_mounts_put_config_and_keys_where_the_config_looks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_as_compose_runs_them("gateway", monkeypatch)
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


def test_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    from llmgateway.observe.metrics import Metrics

    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bllmgateway_[a-z_]+", expr)}
    text = Metrics.create().exposition().decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.MULTILINE))
    exposed = {"llmgateway_keys", "llmgateway_key_states"}  # computed at scrape
    for name, kind in families:
        suffixes = {"counter": [""], "histogram": ["_bucket", "_sum", "_count"]}  # `_total` given
        exposed |= {name + s for s in suffixes.get(kind, [""])}
    assert used <= exposed, sorted(used - exposed)
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("request rate", "error", "latency", "first byte", "overhead", "keys", "breaker"):
        assert topic in titles


def test_env_example_placeholders_stop_the_composed_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unfilled copy of .env.example must fail loudly: compose binds 0.0.0.0, and every
    token it leaves in place is a placeholder the gateway refuses there."""
    from llmgateway.config.weak_tokens import is_loopback, weak_tokens

    settings = settings_as_compose_runs_them("gateway", monkeypatch)
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
