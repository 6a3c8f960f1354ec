"""The suite on a machine with only Python: every test that needs PostgreSQL, Redis or
PgBouncer is skipped, each with a one-line reason, rather than failing; CI's
`LLMGATEWAY_REQUIRE_PG=1` / `LLMGATEWAY_REQUIRE_REDIS=1` turn those skips into failures.

The suite runs in a child pytest with the servers pointed at a closed port and no pgbouncer
program, selecting every test marked for a server (tests reaching one through a fixture are
marked by tests/conftest.py). A test that names the server's URL itself must be marked too:
checked on the source, since such a test could not be told apart at run time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SERVER_FIXTURES, server_problem

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CLOSED = {
    "LLMGATEWAY_TEST_PG_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/test",
    "LLMGATEWAY_TEST_REDIS_URL": "redis://127.0.0.1:1/0",
    "LLMGATEWAY_TEST_PGBOUNCER": "/nonexistent/pgbouncer",
}
REQUIRE = ("LLMGATEWAY_REQUIRE_PG", "LLMGATEWAY_REQUIRE_REDIS", "LLMGATEWAY_REQUIRE_PGBOUNCER")
REASONS = (
    "PostgreSQL at postgresql+asyncpg://postgres@127.0.0.1:1/test unreachable (",
    "Redis at redis://127.0.0.1:1/0 unreachable (",
    "pgbouncer is not installed (apt-get install pgbouncer)",
)
URLS = {"PG_URL": "postgres", "REDIS_URL": "redis"}
NO_CONNECTION = {("integration/test_coherence.py", "test_postgresql_needs_no_start_lock")}
"""Tests that name a server's URL without connecting to it."""


def child_pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in REQUIRE}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args],
        cwd=ROOT,
        env=base | CLOSED | env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_every_server_test_skips_with_a_one_line_reason_without_the_servers() -> None:
    done = child_pytest("-m", "postgres or redis or pgbouncer", "tests")
    summary = done.stdout.splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " skipped" in summary, summary
    assert "passed" not in summary, summary  # each selected test needs a server
    assert "failed" not in summary, summary
    assert "error" not in summary, summary
    report = done.stdout.split("short test summary info", 1)[1].splitlines()[1:-1]
    assert report, done.stdout[-3000:]
    for line in report:
        assert line.startswith("SKIPPED ["), line  # one line each, no traceback
        reason = line.split(": ", 1)[1]
        assert reason.startswith(REASONS), line


def test_ci_requires_the_servers() -> None:
    pg = child_pytest("-m", "postgres", "tests/integration/test_coherence.py", "-x")
    assert pg.returncode == 0, pg.stdout[-3000:]  # skipped
    assert "requires it" not in pg.stdout
    pg = child_pytest(
        "-m", "postgres", "tests/integration/test_coherence.py", "-x", LLMGATEWAY_REQUIRE_PG="1"
    )
    assert pg.returncode == 1, pg.stdout[-3000:]
    assert "; LLMGATEWAY_REQUIRE_PG=1 requires it" in pg.stdout
    redis = child_pytest(
        "tests/integration/test_limits_redis.py", "-x", LLMGATEWAY_REQUIRE_REDIS="1"
    )
    assert redis.returncode == 1, redis.stdout[-3000:]
    assert "; LLMGATEWAY_REQUIRE_REDIS=1 requires it" in redis.stdout


def test_a_test_naming_a_server_url_is_marked_for_that_server() -> None:
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_marks = _marks_of_module(tree)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not node.name.startswith("test_"):
                continue
            named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(URLS)
            marks = module_marks | _marks(node.decorator_list)
            for argument in node.args.args:  # a fixture reaching a server marks the test
                marks.update(SERVER_FIXTURES.get(argument.arg, ()))
            where = (str(path.relative_to(TESTS)), node.name)
            for url in named:
                if URLS[url] not in marks and where not in NO_CONNECTION:
                    unmarked.append(f"{where[0]}::{node.name} uses {url}")
    assert unmarked == [], "mark them @pytest.mark.postgres / redis"


def _marks_of_module(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            return _marks(value.elts if isinstance(value, ast.List | ast.Tuple) else [value])
    return set()


def _marks(expressions: list[ast.expr]) -> set[str]:
    """The names of `pytest.mark.NAME` among `expressions` (decorators, pytestmark)."""
    found = set()
    for expression in expressions:
        for node in ast.walk(expression):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"
            ):
                found.add(node.attr)
    return found


async def test_the_server_check_runs_inside_a_running_event_loop() -> None:
    """As from an async fixture (`pg_database`) of a test that no hook checked first."""
    server_problem.cache_clear()
    problem = server_problem("postgres")
    assert problem is None or problem.startswith(("ConnectionRefusedError", "OSError")), problem
