"""What can be checked of the Dockerfile without a container engine: every path it COPYs from
the build context exists and is in the context `.dockerignore` leaves (read as Docker reads
it, tests/dockerignore.py), nothing else of the checkout is sent (so keys, `.env`, the SQLite
store, `.venv`, `.git`, caches and test output never reach a builder), and the embedded
store's folder is a volume."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from tests.dockerignore import ignored, parse_patterns, read_patterns

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PATTERNS = read_patterns(ROOT / ".dockerignore")

NEVER_SENT = (
    "keys/openai/keys.txt",
    "keys/gemini/more.txt",
    "config/keys/openai/keys.txt",
    ".env",
    ".env.production",
    "config/.env",
    "data/llmgateway.db",
    "data/llmgateway.db-wal",
    "logs/gateway.log",
    "proxies/pool.txt",
    ".venv/bin/python",
    ".tools/bin/uv",
    ".git/HEAD",
    ".git/config",
    ".mypy_cache/3.11/x.json",
    ".ruff_cache/x",
    ".pytest_cache/v/x",
    ".hypothesis/examples/x",
    "src/llmgateway/__pycache__/app.cpython-311.pyc",
    "src/llmgateway/.mypy_cache/x",
    "tests/unit/test_dockerfile.py",
    "bench/results/run.json",
    "dist/llmgateway-0.1.0.whl",
    "examples/.env.example",
    "server.pem",
    "id_rsa",
)


def copied_sources() -> list[str]:
    """The context paths of every `COPY` that is not `--from` another stage or image."""
    sources = []
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("COPY ") else []
        if not words or any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def tracked_files() -> list[str]:
    done = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.splitlines()


def under(path: str, sources: list[str]) -> bool:
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources)


def test_the_dockerfile_copies_what_exists() -> None:
    sources = copied_sources()
    assert sources == ["pyproject.toml", "uv.lock", "README.md", "src", "config"]
    for source in sources:
        assert (ROOT / source).exists(), source


@pytest.mark.parametrize("source", copied_sources())
def test_what_the_dockerfile_copies_is_in_the_context(source: str) -> None:
    files = [f for f in tracked_files() if under(f, [source])]
    assert files, source
    left_out = [f for f in files if ignored(PATTERNS, f)]
    assert not left_out, f"COPY {source} would miss {left_out}"


def test_nothing_else_of_the_checkout_is_sent() -> None:
    sources = copied_sources()
    sent = [f for f in tracked_files() if not ignored(PATTERNS, f)]
    assert sent
    assert [f for f in sent if not under(f, sources)] == []


@pytest.mark.parametrize("path", NEVER_SENT)
def test_secrets_state_and_caches_never_reach_the_builder(path: str) -> None:
    assert ignored(PATTERNS, path)


def test_the_ignore_file_reader_agrees_with_docker_on_its_rules() -> None:
    """The matcher's own rules (so the checks above test `.dockerignore`, not the reader)."""
    patterns = parse_patterns("*\n!src/\n**/__pycache__\n!src/keep/__pycache__\n/dist\n")
    assert ignored(patterns, "keys/a.txt")
    assert ignored(patterns, "README.md")
    assert not ignored(patterns, "src/a.py")
    assert ignored(patterns, "src/b/__pycache__/a.pyc")
    assert not ignored(patterns, "src/keep/__pycache__/a.pyc")
    single = parse_patterns("*.txt\nsrc/*/x\n")
    assert ignored(single, "a.txt")
    assert not ignored(single, "keys/a.txt"), "* stays within one segment"
    assert ignored(single, "src/b/x")
    assert not ignored(single, "src/b/c/x")


def test_the_embedded_store_is_a_volume() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    volumes = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("VOLUME ")]
    assert volumes == [["/app/data"]]
    workdir = [line.split()[1] for line in lines if line.startswith("WORKDIR ")][-1]
    config = (ROOT / "config" / "providers.yaml").read_text()
    assert "sqlite:///data/llmgateway.db" in config, "relative to the working directory"
    assert f"{workdir}/data" == "/app/data"
