"""`llmgateway keys export|import` against real stores (SQLite, PostgreSQL, PostgreSQL through
PgBouncer in transaction mode) and real key folders: the secrets go out only where asked, and
imported keys land in a new 0600 file of the folder and in the store at once. Logs and the
import's output never hold a key in full."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.integration.test_keys_cli import ALL_KEYS, GEMINI, GOOD, INVALID, NOQUOTA, write_config
from tests.integration.test_keys_cli import write_files as write_key_folders
from tests.pgbouncer import Route, routes

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.key_import import MAX_IMPORT_BYTES
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import KeyFilter, StatusEvent
from llmgateway.store import Store
from llmgateway.store.key_export import export_pages
from llmgateway.store.key_list import listing_pages

OPENAI = [*GOOD, INVALID, NOQUOTA]


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


async def arun(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    return await asyncio.to_thread(run, *args, stdin=stdin)


async def synced(config: Path, invalid: str | None = INVALID) -> None:
    """One sync; `invalid` is then recorded as `invalid_key` for every model."""
    settings = load_settings(config)
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        if invalid is None:
            return
        async for page in listing_pages(store, KeyFilter("openai")):
            events = [
                StatusEvent(row.key_id, row.model, KeyStatus.INVALID_KEY, 1e12, status_code=401)
                for row in page
                if row.fingerprint == fingerprint(invalid)
            ]
            await store.apply_events(events)


async def active_keys(config: Path, provider: str) -> set[str]:
    settings = load_settings(config)
    async with await Store.configured(settings.database) as store:
        found: set[str] = set()
        async for page in export_pages(store, KeyFilter(provider)):
            found |= {k.secret for k in page}
        return found


# -- export --------------------------------------------------------------------------------------


async def test_export_txt_and_csv_with_filters(db_url: str, tmp_path: Path) -> None:
    write_key_folders(tmp_path)
    config = str(write_config(tmp_path, db_url))
    await synced(Path(config))

    code, out, err = await arun("keys", "export", "--config", config)
    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(ALL_KEYS)

    code, out, err = await arun(
        "keys", "export", "--config", config, "--provider", "openai", "--status", "invalid"
    )
    assert code == 0, err
    assert out.splitlines() == [INVALID]
    code, out, _ = await arun("keys", "export", "--config", config, "--status", "untested")
    assert sorted(out.splitlines()) == sorted([*GOOD, NOQUOTA, *GEMINI])
    code, out, _ = await arun("keys", "export", "--config", config, "--model", "shared")
    assert sorted(out.splitlines()) == sorted(GEMINI)

    code, out, err = await arun("keys", "export", "--config", config, "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["provider", "fingerprint", "status", "source", "key"]
    by_key = {row[4]: row for row in rows[1:]}
    assert set(by_key) == set(ALL_KEYS)
    folder = tmp_path / "keys" / "openai"
    assert by_key[INVALID] == [
        "openai",
        fingerprint(INVALID),
        "invalid_key",
        f"{folder}/a.txt:4",
        INVALID,
    ]
    assert by_key[GEMINI[0]][:3] == ["gemini", fingerprint(GEMINI[0]), "untested"]

    logged = [err]

    code, out, err = await arun("keys", "disable", fingerprint(GOOD[0])[:8], "--config", config)
    assert code == 0, err
    code, out, err = await arun(
        "keys", "export", "--config", config, "--status", "disabled", "--format", "csv"
    )
    assert code == 0, err
    assert [row[2:] for row in csv.reader(io.StringIO(out))][1:] == [
        ["disabled", f"{folder}/a.txt:2", GOOD[0]]
    ]
    code, out, err = await arun(
        "keys", "export", "--config", config, "--provider", "openai", "--status", "invalid"
    )
    logged.append(err)
    assert "[warning" in logged[0]
    assert "exported 7 keys of provider gemini (2), openai (5) (filter none)" in logged[0]
    assert (
        "exported 1 keys of provider openai (filter --provider openai --status invalid_key"
        " --status no_access) to standard output" in logged[1]
    )
    for line in logged:
        for key in ALL_KEYS:
            assert key not in line


async def test_export_to_a_new_private_file(db_url: str, tmp_path: Path) -> None:
    write_key_folders(tmp_path)
    config = str(write_config(tmp_path, db_url))
    await synced(Path(config))
    target = tmp_path / "out" / "keys.csv"
    target.parent.mkdir()
    code, out, err = await arun(
        "keys", "export", "--config", config, "--format", "csv", "--output", str(target)
    )
    assert code == 0, err
    assert out == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(target.read_text().splitlines()) == 1 + len(ALL_KEYS)
    target.chmod(0o644)
    code, _, err = await arun("keys", "export", "--config", config, "--output", str(target))
    assert code == 2
    assert "exists" in err
    assert len(target.read_text().splitlines()) == 1 + len(ALL_KEYS)  # left as it was


@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
async def test_export_pages_through_pgbouncer(
    route: Route, pg_database: str, tmp_path: Path
) -> None:
    write_key_folders(tmp_path)
    config = write_config(tmp_path, route.url(pg_database))
    await synced(config)
    settings = load_settings(config)
    invalid_only = KeyFilter(statuses=frozenset({KeyStatus.INVALID_KEY}))
    async with await Store.configured(settings.database) as store:
        walks = {
            size: [k async for page in export_pages(store, KeyFilter(), page=size) for k in page]
            for size in (1, 2, 3, 1000)  # pages cut keys of two rows (two models) anywhere
        }
        one_page = [page async for page in export_pages(store, KeyFilter(), page=1000)]
        invalid = [k async for page in export_pages(store, invalid_only, page=1) for k in page]
    assert len(one_page) == 1
    for walk in walks.values():
        assert walk == walks[1000]
    ids = [k.key_id for k in walks[1000]]
    assert ids == sorted(set(ids))
    assert sorted(k.secret for k in walks[1000]) == sorted(ALL_KEYS)
    assert [(k.secret, k.status) for k in invalid] == [(INVALID, "invalid_key")]


def test_export_refuses_a_terminal(tmp_path: Path) -> None:
    """The real command on a pseudo-terminal: refused unless --to-terminal (SQLite store)."""
    write_key_folders(tmp_path)
    config = str(write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"))
    asyncio.run(synced(Path(config)))

    def on_a_terminal(*args: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        env = {**os.environ, "LLMGATEWAY_DOTENV": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
        process = subprocess.Popen(
            [sys.executable, "-m", "llmgateway", "keys", "export", "--config", config, *args],
            stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = process.communicate(timeout=60)
        os.close(leader)
        return process.returncode, b"".join(chunks).decode() + err.decode()

    code, seen = on_a_terminal()
    assert code == 2
    assert "terminal" in seen
    for key in ALL_KEYS:
        assert key not in seen
    code, seen = on_a_terminal("--to-terminal", "--provider", "gemini")
    assert code == 0, seen
    assert GEMINI[0] in seen


# -- import --------------------------------------------------------------------------------------


async def test_import_writes_a_new_file_and_syncs_at_once(db_url: str, tmp_path: Path) -> None:
    write_key_folders(tmp_path)
    config = str(write_config(tmp_path, db_url))
    await synced(Path(config), invalid=None)
    fresh = ["sk-new-0001-abcdefghijklmnop", "sk-new-0002-abcdefghijklmnop"]
    bad = 'sk-"quoted"-abcdefghijklmnop'
    text = f"# from the vault\n{fresh[0]}, {GOOD[0]}\n{bad} {fresh[1]}\nshort\n{fresh[0]}\n"

    code, out, err = await arun(
        "keys", "import", "openai", "--config", config, "--json", stdin=text
    )
    assert code == 0, err
    summary = json.loads(out)
    folder = tmp_path / "keys" / "openai"
    written = Path(summary["file"])
    assert written.parent == folder
    assert written.name.startswith("imported-")
    assert summary | {"file": None, "invalid_tokens": []} == {
        "provider": "openai", "read": 3, "invalid": 2, "invalid_tokens": [],
        "duplicates": 1, "added": 2, "file": None, "active_in_store": 7,
    }  # fmt: skip
    assert summary["invalid_tokens"] == [
        f"<stdin>:3: {mask(bad)} is not a key (contains a quote; write keys without quotes)",
        f"<stdin>:4: {mask('short')} is not a key (too short: 5 characters, keys have at least 8)",
    ]
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert [line for line in written.read_text().splitlines() if not line.startswith("#")] == fresh
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt", written.name]  # no temp
    assert await active_keys(Path(config), "openai") == {*OPENAI, *fresh}
    for key in [*ALL_KEYS, *fresh]:
        assert key not in out + err

    # again, from a file: everything is already there, nothing is written
    source = tmp_path / "again.txt"
    source.write_text("\n".join(fresh))
    code, out, err = await arun("keys", "import", "openai", str(source), "--config", config)
    assert code == 0, err
    assert "read 2 keys, 0 new, 2 already in" in out
    assert len(list(folder.iterdir())) == 3


async def test_round_trip_into_another_provider_and_store(tmp_path: Path, db_url: str) -> None:
    """Export openai's keys from one store, import them as gemini's keys into another."""
    first = tmp_path / "first"
    write_key_folders(first)
    config = str(write_config(first, db_url))
    await synced(Path(config))
    code, exported, err = await arun("keys", "export", "--config", config, "--provider", "openai")
    assert code == 0, err

    second = tmp_path / "second"
    write_key_folders(second)
    other = str(write_config(second, f"sqlite+aiosqlite:///{second / 'other.db'}"))
    code, out, err = await arun(
        "keys", "import", "gemini", "--config", other, "--json", stdin=exported
    )
    assert code == 0, err
    assert json.loads(out)["added"] == len(OPENAI)
    assert await active_keys(Path(other), "gemini") == {*GEMINI, *OPENAI}


async def test_import_refuses_a_kubernetes_secret_mount(tmp_path: Path) -> None:
    """The layout a secret volume has: `..data` -> a timestamped folder, files linked through."""
    folder = tmp_path / "keys" / "openai"
    stamped = folder / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    (stamped / "keys.txt").write_text(GOOD[0] + "\n")
    (folder / "..data").symlink_to(stamped.name)
    (folder / "keys.txt").symlink_to("..data/keys.txt")
    (tmp_path / "keys" / "gemini").mkdir()
    config = str(write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"))
    code, out, err = await arun(
        "keys", "import", "openai", "--config", config, stdin=f"{GOOD[1]}\n"
    )
    assert code == 1
    assert "Kubernetes secret" in err
    assert "kubectl edit secret" in err
    assert sorted(p.name for p in folder.iterdir()) == [
        "..2026_01_01_00_00_00.000000001",
        "..data",
        "keys.txt",
    ]
    assert GOOD[1] not in out + err


def test_import_names_an_unknown_provider(tmp_path: Path) -> None:
    write_key_folders(tmp_path)
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    data = yaml.safe_load(config.read_text())
    assert "mistral" not in data["providers"]
    code, _, err = run("keys", "import", "mistral", "--config", str(config), stdin="")
    assert code == 2
    assert "no provider 'mistral'" in err


def test_import_refuses_input_over_its_bound(tmp_path: Path) -> None:
    """More than `MAX_IMPORT_BYTES` on standard input: refused, nothing written, and only one
    byte past the bound was read."""
    write_key_folders(tmp_path)
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    oversized = "sk-x-0001-abcdefghijklmnop\n" * (MAX_IMPORT_BYTES // 27 + 2)
    code, _, err = run("keys", "import", "openai", "--config", str(config), stdin=oversized)
    assert code == 1
    assert "nothing imported: <stdin>: more than 64 MiB; split it" in err
    assert sorted(p.name for p in (tmp_path / "keys" / "openai").iterdir()) == ["a.txt", "b.txt"]


def test_import_refuses_a_read_only_mount(tmp_path: Path) -> None:
    """The real command in a private mount namespace where the folder is bound read-only
    (`unshare -m`, as root); skipped where namespaces cannot be made."""
    write_key_folders(tmp_path)
    config = str(write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"))
    folder = tmp_path / "keys" / "openai"
    trial = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"],
        capture_output=True,
        check=False,
    )
    if trial.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {trial.stderr.decode().strip()[:200]}")
    env = {**os.environ, "LLMGATEWAY_DOTENV": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = (
        f"mount --bind -o ro '{folder}' '{folder}' && exec '{sys.executable}' -m llmgateway "
        f"keys import openai --config '{config}'"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        input=b"sk-new-0001-abcdefghijklmnop\n",
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "nothing imported" in err
    assert "read-only file system" in err
    assert "`llmgateway db sync`" in err  # a command that exists
    assert "sk-new-0001" not in err + done.stdout.decode()
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
