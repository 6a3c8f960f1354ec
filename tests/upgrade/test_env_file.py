"""`.env` is read at the start of every command, through the real CLI in child processes:
from the working directory, never overriding the environment, `--env-file PATH` (before or
after the command), `--env-file none` and `$LLMGATEWAY_DOTENV=0`; what was read is said by
names, never values; a bad line is an error naming the file and line. And the test suite
itself reads no `.env`: a hostile one in the working directory changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmgateway.cli.main import main
from llmgateway.testing.configs import write_keys
from tests.helpers import free_port

PASSWORD = "env-secret-password-5d1f"
TOKEN = "env-gateway-token-8c2e4a6b0d9f"
CONFIG = """
database:
  url: "${LLMGATEWAY_DATABASE_URL}"
gateway:
  port: ${GW_PORT:-0}
metrics:
  access_token: "${METRICS_TOKEN:-}"
providers:
  openai:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.example.com/v1
    default_model: m
    models:
      m: {endpoint_suffix: /chat/completions}
    access_control:
      gateway_access_token: "${OPENAI_GATEWAY_TOKEN}"
"""


def project(folder: Path, env_text: str | None, name: str = ".env") -> Path:
    """A working directory as a user has it: config/providers.yaml, keys, and an env file."""
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "providers.yaml").write_text(CONFIG)
    write_keys(folder / "keys" / "openai", ["sk-env-file-key-0000000001"])
    if env_text is not None:
        (folder / name).write_text(env_text)
    return folder


def dotenv(folder: Path, store: str = "from-env-file.db", **more: str) -> str:
    lines = [
        "# the store and the token, as an operator keeps them",
        f"LLMGATEWAY_DATABASE_URL=sqlite:///{folder / store} #inline comment",
        f"OPENAI_GATEWAY_TOKEN={TOKEN}",
        f'DB_PASSWORD="{PASSWORD}"',
    ]
    lines += [f"{name}={value}" for name, value in more.items()]
    return "\n".join(lines) + "\n"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of our variables, not the suite's opt-out."""
    keep = ("PATH", "PYTHONPATH", "HOME", "LANG")
    return {name: os.environ[name] for name in keep if name in os.environ} | extra


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "llmgateway", *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


ENV_NOTE = "environment file .env: set LLMGATEWAY_DATABASE_URL, OPENAI_GATEWAY_TOKEN, DB_PASSWORD"


def test_status_reads_dotenv_from_the_working_directory(tmp_path: Path) -> None:
    folder = project(tmp_path, dotenv(tmp_path))
    code, out, err = cli("status", cwd=folder)
    assert code == 0, err
    assert "no keys in the store yet" in out
    assert (tmp_path / "from-env-file.db").exists(), "the store .env names (inline comment cut)"
    assert err.splitlines() == [ENV_NOTE]
    assert PASSWORD not in err + out
    assert TOKEN not in err + out


def test_check_config_with_and_without_dotenv(tmp_path: Path) -> None:
    folder = project(tmp_path, dotenv(tmp_path))
    code, out, err = cli("check-config", cwd=folder)
    assert (code, out) == (0, "ok: 1 provider (openai), database: sqlite\n"), err
    assert err.splitlines()[0] == ENV_NOTE
    code, out, err = cli("check-config", cwd=folder, env=clean_env(LLMGATEWAY_DOTENV="0"))
    assert code == 2
    assert "environment variable LLMGATEWAY_DATABASE_URL is not set" in err
    assert "environment file" not in err


def test_the_environment_wins_over_dotenv(tmp_path: Path) -> None:
    folder = project(tmp_path, dotenv(tmp_path))
    chosen = f"sqlite:///{tmp_path / 'from-environment.db'}"
    code, _, err = cli("status", cwd=folder, env=clean_env(LLMGATEWAY_DATABASE_URL=chosen))
    assert code == 0, err
    assert (tmp_path / "from-environment.db").exists()
    assert not (tmp_path / "from-env-file.db").exists()
    assert err.splitlines() == [
        "environment file .env: set OPENAI_GATEWAY_TOKEN, DB_PASSWORD; "
        "already in the environment, kept: LLMGATEWAY_DATABASE_URL"
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_env_file_picks_another_file(tmp_path: Path, where: str) -> None:
    folder = project(tmp_path, dotenv(tmp_path, "default.db"))
    other = tmp_path / "prod.env"
    other.write_text(dotenv(tmp_path, "prod.db"))
    option = ["--env-file", str(other)]
    args = [*option, "status"] if where == "before" else ["status", *option]
    code, _, err = cli(*args, cwd=folder)
    assert code == 0, err
    assert (tmp_path / "prod.db").exists()
    assert not (tmp_path / "default.db").exists(), "the default .env is not read as well"
    assert err.splitlines()[0].startswith(f"environment file {other}: set ")


def test_env_file_none_and_the_switch_read_nothing(tmp_path: Path) -> None:
    folder = project(tmp_path, dotenv(tmp_path))
    for args, env in (
        (["--env-file", "none", "check-config"], clean_env()),
        (["check-config", "--env-file", "none"], clean_env()),
        (["check-config"], clean_env(LLMGATEWAY_DOTENV="0")),
    ):
        code, _, err = cli(*args, cwd=folder, env=env)
        assert code == 2, args
        assert "LLMGATEWAY_DATABASE_URL is not set" in err, args
    # an explicit file is read even with the switch off
    code, _, err = cli(
        "--env-file", ".env", "check-config", cwd=folder, env=clean_env(LLMGATEWAY_DOTENV="0")
    )
    assert code == 0, err


def test_a_missing_file_is_an_error_only_when_named(tmp_path: Path) -> None:
    folder = project(tmp_path, None)
    env = clean_env(
        LLMGATEWAY_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", OPENAI_GATEWAY_TOKEN=TOKEN
    )
    code, out, err = cli("check-config", cwd=folder, env=env)
    assert (code, err) == (0, ""), "no .env: nothing said"
    code, out, err = cli("--env-file", "missing.env", "check-config", cwd=folder, env=env)
    assert code == 2
    assert err == (
        "missing.env: environment file not found (give an existing file to --env-file, "
        "or --env-file none to read none)\n"
    )
    assert out == ""


def test_a_malformed_line_names_file_and_line_and_never_its_text(tmp_path: Path) -> None:
    text = dotenv(tmp_path) + f"DB_PASSWORD {PASSWORD}\nfine=1\n'broken={PASSWORD}\n"
    folder = project(tmp_path, text)
    for command in ("check-config", "status", "worker"):
        code, out, err = cli(command, cwd=folder)
        assert code == 2, command
        assert err.splitlines() == [
            f".env:{line}: not a NAME=value line (write NAME=value; quote a value holding "
            "spaces or a # ('...' or \"...\"))"
            for line in (5, 7)
        ], command
        assert PASSWORD not in err + out
    assert not (tmp_path / "from-env-file.db").exists(), "nothing ran"


async def test_a_gateway_start_logs_the_names_it_read_never_the_values(tmp_path: Path) -> None:
    port = free_port()
    folder = project(tmp_path, dotenv(tmp_path, GW_PORT=str(port), METRICS_TOKEN=PASSWORD))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "gateway",
        cwd=folder, env=clean_env(NO_COLOR="1"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(f"Uvicorn running on http://127.0.0.1:{port}" in s for s in seen):
                line = (await process.stderr.readline()).decode()
                assert line, "it ended before listening:\n" + "".join(seen)
                seen.append(line)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 30)
    logged = "".join(seen)
    notes = [line for line in seen if "environment file .env:" in line]
    assert len(notes) == 1, logged
    names = "LLMGATEWAY_DATABASE_URL, OPENAI_GATEWAY_TOKEN, DB_PASSWORD, GW_PORT, METRICS_TOKEN"
    assert f"environment file .env: set {names} [llmgateway.env]" in notes[0]
    for secret in (PASSWORD, TOKEN, str(tmp_path / "from-env-file.db")):
        assert secret not in logged
    assert (tmp_path / "from-env-file.db").exists()


HOSTILE_CONFIG = CONFIG.replace('"${LLMGATEWAY_DATABASE_URL}"', '"sqlite:///hostile-config.db"')


def hostile_project(folder: Path) -> Path:
    """A working directory whose .env points the config, the database and DB_* elsewhere."""
    project(folder, None)
    (folder / "hostile.yaml").write_text(HOSTILE_CONFIG)
    (folder / ".env").write_text(
        f"LLMGATEWAY_CONFIG={folder / 'hostile.yaml'}\n"
        f"LLMGATEWAY_DATABASE_URL=sqlite:///{folder / 'hostile-url.db'}\n"
        "DB_HOST=attacker.example\nDB_PASSWORD=stolen\nOPENAI_GATEWAY_TOKEN=hostile-token-000000\n"
    )
    return folder


def test_the_suite_reads_no_dotenv_and_would_without_its_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get("LLMGATEWAY_DOTENV") == "0", "tests/conftest.py sets it at import"
    folder = hostile_project(tmp_path)
    good = f"sqlite:///{tmp_path / 'suite.db'}"
    suite_env = dict(os.environ) | {
        "LLMGATEWAY_DATABASE_URL": good,
        "OPENAI_GATEWAY_TOKEN": TOKEN,
    }
    suite_env.pop("LLMGATEWAY_CONFIG", None)
    # a child process, as the suite starts the CLI: the hostile .env changes nothing
    code, _, err = cli("status", cwd=folder, env=suite_env)
    assert code == 0, err
    assert (tmp_path / "suite.db").exists()
    assert not list(tmp_path.glob("hostile*.db"))
    assert "environment file" not in err
    # in this process (CliRunner), as the unit tests run it: nothing read, nothing set
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LLMGATEWAY_DATABASE_URL", good)
    monkeypatch.setenv("OPENAI_GATEWAY_TOKEN", TOKEN)
    before = dict(os.environ)
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    # without the switch the same .env would be read: the config and database it names
    suite_env.pop("LLMGATEWAY_DOTENV")
    suite_env.pop("LLMGATEWAY_DATABASE_URL")
    code, _, err = cli("status", cwd=folder, env=suite_env)
    assert code == 0, err
    assert (tmp_path / "hostile-config.db").exists()
    assert "environment file .env: set LLMGATEWAY_CONFIG, LLMGATEWAY_DATABASE_URL" in err
