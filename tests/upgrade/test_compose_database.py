"""The composed gateway's environment really gets into a password-protected PostgreSQL, with
either config: the original's builds its URL from DB_* (the password URL-quoted), ours takes
the password-free LLMGATEWAY_DATABASE_URL and PGPASSWORD. A PgBouncer that demands the
password (SCRAM) stands in for the compose file's database; a wrong password is refused, so
the password is what lets the command in. The CLI runs with exactly the environment Compose
would give the gateway container (docker-compose.yml resolved by tests/compose.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.compose import container_env, read_env, resolved_compose
from tests.conftest import require_server
from tests.pgbouncer import PgBouncer, require_pgbouncer, start_pgbouncer

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = ROOT / "tests" / "upgrade" / "original_configs"
PASSWORD = "Tr1cky/p@ss:w0rd#%?&"
CONFIGS = {"original": ORIGINAL / "full_config.yaml", "ours": ROOT / "config" / "providers.yaml"}

pytestmark = [pytest.mark.postgres, pytest.mark.pgbouncer]


@pytest.fixture
def guarded() -> Iterator[PgBouncer]:
    require_server("postgres")
    require_pgbouncer()
    bouncer = start_pgbouncer("session", password=PASSWORD)
    yield bouncer
    bouncer.stop()


def composed_env(
    bouncer: PgBouncer, database: str, password: str, service: str = "gateway"
) -> dict[str, str]:
    """The `service` container's environment for the original-shaped .env, its DB_* pointing
    at `bouncer` (where the compose file's database would be)."""
    dotenv = read_env(ORIGINAL / "original.env") | {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(bouncer.port),
        "DB_USER": "postgres",
        "DB_PASSWORD": password,
        "DB_NAME": database,
    }
    return container_env(resolved_compose(dotenv)["services"][service], dotenv)


def db_upgrade(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    command = ["--env-file", "none", "db", "upgrade", "--config", str(config)]
    return subprocess.run(
        [sys.executable, "-m", "llmgateway", *command],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("service", ["gateway", "worker"])
@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_the_composed_environment_logs_in_with_the_password(
    which: str, service: str, guarded: PgBouncer, pg_database: str
) -> None:
    database = make_url(pg_database).database
    assert database is not None
    assert set("@/#:%") <= set(PASSWORD)
    done = db_upgrade(CONFIGS[which], composed_env(guarded, database, PASSWORD, service))
    assert done.returncode == 0, done.stderr
    assert f"@127.0.0.1:{guarded.port}/{database}: schema up to date" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    wrong = db_upgrade(CONFIGS[which], composed_env(guarded, database, "not-it", service))
    assert wrong.returncode == 1
    last = wrong.stderr.splitlines()[-1]
    assert last.startswith("cannot use the database at "), wrong.stderr
    assert last.endswith("authentication failed"), wrong.stderr
    assert "not-it" not in wrong.stderr
    assert "could not ask the database" not in wrong.stderr, "a refused login is no pooler question"
