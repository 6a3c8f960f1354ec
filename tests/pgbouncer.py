"""A real PgBouncer (the operating system's package) in front of the test PostgreSQL, for the
tests that must hold through a connection pooler.

`start_pgbouncer()` runs one in transaction pooling mode on a free loopback port, with every
database of the test server behind it (`* = host=… port=…`) and small server pools, so that
client connections really do share server connections. The `pgbouncer` fixture in
tests/conftest.py starts one per test session. `routes()` gives the ways a test reaches the
store: `direct` (PostgreSQL itself), `pgbouncer` (through the pooler, nothing else) and
`pgbouncer+direct` (through the pooler, with `database.direct_url` for the session features).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.helpers import PG_URL, free_port, libpq_dsn

REQUIRE_VARIABLE = "LLMGATEWAY_REQUIRE_PGBOUNCER"
SERVER_POOL_SIZE = 6
"""Server connections per database and user: fewer than the clients of a scale-out test."""

ROUTES = ("direct", "pgbouncer", "pgbouncer+direct")


def routes(*names: str) -> list[object]:
    """`pytest.param`s of the routes `names` (default all), the pooled ones marked `pgbouncer`
    so that `-m "not pgbouncer"` leaves them out."""
    chosen = names or ROUTES
    return [
        pytest.param(name, marks=[pytest.mark.pgbouncer] if name != "direct" else [], id=name)
        for name in chosen
    ]


@dataclass(slots=True)
class PgBouncer:
    """A running PgBouncer: its port, process and folder (config and log)."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    password: str | None = None  # the one clients must give (None: any, trust)

    def url(self, database_url: str) -> str:
        """`database_url` (a database of the test server) reached through this PgBouncer."""
        parsed = make_url(database_url).set(host="127.0.0.1", port=self.port)
        if self.password is not None:
            parsed = parsed.set(password=self.password)
        return parsed.render_as_string(hide_password=False)

    def log(self) -> str:
        """What PgBouncer has logged so far."""
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s) and remove its folder."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


PROGRAM_VARIABLE = "LLMGATEWAY_TEST_PGBOUNCER"
"""A pgbouncer program to use instead of the installed one (e.g. a newer build, to run the
pooled tests against PgBouncer's own prepared-statement support of 1.21 and later)."""


def pgbouncer_program() -> str | None:
    """The pgbouncer program: `LLMGATEWAY_TEST_PGBOUNCER`, else on PATH, else where Debian
    puts it; None when there is none."""
    chosen = os.environ.get(PROGRAM_VARIABLE)
    if chosen:
        return shutil.which(chosen)
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def pgbouncer_problem() -> str | None:
    """None when the pgbouncer program is installed, else why it cannot run."""
    if pgbouncer_program() is None:
        return "pgbouncer is not installed (apt-get install pgbouncer)"
    return None


def require_pgbouncer() -> None:
    """Skip the running test without PgBouncer, or fail it under LLMGATEWAY_REQUIRE_PGBOUNCER=1."""
    problem = pgbouncer_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{problem}; {REQUIRE_VARIABLE}=1 requires it", pytrace=False)
    pytest.skip(problem)


_PREPARED = os.environ.get("LLMGATEWAY_TEST_PGBOUNCER_PREPARED", "")
PREPARED_STATEMENTS = int(_PREPARED) if _PREPARED else None
"""`max_prepared_statements` for a PgBouncer of 1.21 or later (0 turns its tracking of
protocol-level prepared statements off); None leaves the setting out, as 1.18 does not know it
(set it for a newer build: from 1.22 on the tracking is on by default)."""


def start_pgbouncer(
    mode: str = "transaction", within: float = 15.0, password: str | None = None
) -> PgBouncer:
    """A PgBouncer in `mode` in front of the test server (`PG_URL`), answering queries; with
    `password`, clients must log in with it (SCRAM), whatever the server itself asks."""
    server = make_url(PG_URL)
    user = server.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="llmgw-pgbouncer-"))
    folder.chmod(0o755)  # PgBouncer refuses to run as root: it reads these as another user
    users = folder / "users.txt"
    secret = (server.password or "") if password is None else password
    quoted = secret.replace('"', '""')
    users.write_text(f'"{user}" "{quoted}"\n')
    port = free_port()
    config = folder / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        f"auth_type = {'trust' if password is None else 'scram-sha-256'}\n"
        f"auth_file = {users}\n"
        f"pool_mode = {mode}\n"
        f"default_pool_size = {SERVER_POOL_SIZE}\n"
        "max_client_conn = 1000\n"
        f"admin_users = {user}\n"
        # 1.21 and later track protocol-level prepared statements (the default from 1.22 on);
        # ours are unnamed through a transaction pooler, so either setting must work
        + (
            ""
            if PREPARED_STATEMENTS is None
            else f"max_prepared_statements = {PREPARED_STATEMENTS}\n"
        )
    )
    for path in (users, config):
        path.chmod(0o644)
    command = [pgbouncer_program() or "pgbouncer", str(config)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", _unprivileged_user()]
    log = (folder / "pgbouncer.log").open("wb")
    with log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(port, process, folder, password)
    try:
        _wait_answering(bouncer, within)
    except BaseException:
        bouncer.stop()
        raise
    return bouncer


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("no unprivileged user (postgres, nobody) to run pgbouncer as")


def _wait_answering(bouncer: PgBouncer, within: float) -> None:
    """Until a query through `bouncer` answers; fails at once if it exited."""
    dsn = libpq_dsn(bouncer.url(PG_URL))
    deadline = time.monotonic() + within
    while True:
        if bouncer.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({bouncer.process.returncode}):\n{bouncer.log()}")
        try:
            asyncio.run(_query(dsn))
            return
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not answering: {error}\n{bouncer.log()}") from None
        time.sleep(0.05)


async def _query(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=3, statement_cache_size=0)
    try:
        await connection.execute("SELECT 1")
    finally:
        await connection.close()


@dataclass(frozen=True, slots=True)
class Route:
    """How a test reaches a database of the test server: one of `ROUTES`."""

    name: str
    bouncer: PgBouncer | None

    @property
    def pooled(self) -> bool:
        """Through PgBouncer (transaction pooling)."""
        return self.bouncer is not None

    def url(self, database_url: str) -> str:
        """`database.url` for `database_url` on this route."""
        return database_url if self.bouncer is None else self.bouncer.url(database_url)

    def direct_url(self, database_url: str) -> str | None:
        """`database.direct_url` on this route (None: not set)."""
        return database_url if self.name == "pgbouncer+direct" else None

    def database(self, database_url: str, **extra: object) -> dict[str, object]:
        """The `database` section of a config on this route."""
        section: dict[str, object] = {"url": self.url(database_url), **extra}
        direct = self.direct_url(database_url)
        if direct is not None:
            section["direct_url"] = direct
        return section
