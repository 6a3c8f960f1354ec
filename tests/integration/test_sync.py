"""Key and proxy files on disk → the store (both databases), and the CLI commands around it."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from llmgateway.cli.main import main
from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store, SyncChanges

KEYS = [f"sk-test-{i:04d}-abcdefghijklmnop" for i in range(6)]
TOKEN = "gw-token-for-tests-0001"


def provider(keys_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "provider_type": "openai_like",
        "keys_path": str(keys_path),
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m1",
        "models": {"m1": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": TOKEN},
        **extra,
    }


def settings(**providers: dict[str, Any]) -> Settings:
    return Settings.model_validate({"providers": providers})


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


async def active_keys(store: Store, name: str = "p1") -> set[str]:
    return {r.secret for r in (await store.snapshot()).keys if r.provider == name}


async def test_files_add_remove_and_restore_keys(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    write(folder / "a.txt", "\ufeff" + "\r\n".join(KEYS[:3]) + "\r\n")
    write(folder / "b.txt", f"# shared with a.txt\n{KEYS[2]}, {KEYS[3]}\n")
    config = settings(p1=provider(folder))

    report = await run_sync(config, store)
    (result,) = report.providers
    assert result.keys == SyncChanges(added=4, active=4)
    assert result.problems == ()
    assert result.complete
    assert await active_keys(store) == set(KEYS[:4])

    again = await run_sync(config, store)
    assert again.providers[0].keys == SyncChanges(active=4)

    write(folder / "b.txt", f"{KEYS[4]}\n")
    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(added=1, removed=1, active=4)
    assert await active_keys(store) == {*KEYS[:3], KEYS[4]}

    write(folder / "b.txt", f"{KEYS[3]}\n{KEYS[4]}\n")
    report = await run_sync(config, store)  # KEYS[4] moved from b.txt:1 to b.txt:2
    assert report.providers[0].keys == SyncChanges(restored=1, active=5, moved=1)


async def test_garbage_is_reported_and_skipped(store: Store, tmp_path: Path) -> None:
    secret = "sk-proj-TOPSECRET-with space"
    write(tmp_path / "keys" / "a.txt", f"{KEYS[0]}\n'{secret}'\n")
    report = await run_sync(settings(p1=provider(tmp_path / "keys")), store)
    assert await active_keys(store) == {KEYS[0]}
    lines = [str(p) for p in report.problems]
    assert [line.split(": ")[0] for line in lines] == [f"{tmp_path / 'keys' / 'a.txt'}:2"] * 2
    assert "TOPSECRET" not in "\n".join(lines)
    assert report.providers[0].complete


async def test_an_unreadable_file_never_removes_keys(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    write(folder / "a.txt", f"{KEYS[0]}\n{KEYS[1]}\n")
    write(folder / "b.txt", f"{KEYS[2]}\n")
    config = settings(p1=provider(folder))
    await run_sync(config, store)

    write(folder / "a.txt", f"{KEYS[0]}\n{KEYS[5]}\n")  # KEYS[1] gone, KEYS[5] new
    write(folder / "b.txt", b"\xff\xfe" + KEYS[2].encode("utf-16-le"))
    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(added=1, active=4)
    assert not report.providers[0].complete
    assert await active_keys(store) == {KEYS[0], KEYS[1], KEYS[2], KEYS[5]}

    write(folder / "b.txt", f"{KEYS[2]}\n")  # fixed: now the removal happens
    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(removed=1, active=3)


async def test_a_missing_folder_keeps_keys_and_an_empty_one_clears_them(
    store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "keys"
    write(folder / "a.txt", f"{KEYS[0]}\n")
    config = settings(p1=provider(folder))
    await run_sync(config, store)

    (folder / "a.txt").unlink()
    folder.rmdir()
    report = await run_sync(config, store)
    assert "folder not found" in str(report.problems[0])
    assert await active_keys(store) == {KEYS[0]}

    folder.mkdir()
    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(removed=1, active=0)
    assert await active_keys(store) == set()


async def test_disabled_provider_and_shared_status(store: Store, tmp_path: Path) -> None:
    write(tmp_path / "a" / "k.txt", f"{KEYS[0]}\n")
    write(tmp_path / "b" / "k.txt", f"{KEYS[1]}\n")
    both = {
        "p1": provider(tmp_path / "a", shared_key_status=True),
        "p2": provider(tmp_path / "b"),
    }
    await run_sync(settings(**both), store)
    rows = {(r.provider, r.model) for r in (await store.snapshot()).keys}
    assert rows == {("p1", ALL_MODELS), ("p2", "m1")}

    both["p2"] = provider(tmp_path / "b", enabled=False)
    report = await run_sync(settings(**both), store)
    assert report.providers[1].keys is None
    assert await active_keys(store, "p2") == set()
    both["p2"] = provider(tmp_path / "b")
    await run_sync(settings(**both), store)
    assert await active_keys(store, "p2") == {KEYS[1]}


async def test_stealth_proxy_pool(store: Store, tmp_path: Path) -> None:
    write(tmp_path / "keys" / "k.txt", f"{KEYS[0]}\n")
    write(
        tmp_path / "proxies" / "list.txt",
        "http://u:hidden-pass@10.0.0.1:3128\nsocks5://10.0.0.2:1080\nnot-a-proxy\n",
    )
    stealth = {"mode": "stealth", "pool_list_path": str(tmp_path / "proxies")}
    config = settings(p1=provider(tmp_path / "keys", proxy_config=stealth))
    report = await run_sync(config, store)
    assert report.providers[0].proxies == SyncChanges(added=2, active=2)
    assert "hidden-pass" not in str(report.problems)
    assert len((await store.snapshot()).proxies) == 2

    await run_sync(settings(p1=provider(tmp_path / "keys")), store)  # stealth turned off
    assert (await store.snapshot()).proxies == []


async def test_100k_keys_in_10_files(store: Store, tmp_path: Path) -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    keys = {"sk-" + "".join(rng.choices(alphabet, k=40)) for _ in range(100_000)}
    ordered = sorted(keys)
    folder = tmp_path / "keys"
    for i in range(10):
        write(folder / f"keys-{i}.txt", "\n".join(ordered[i::10]) + "\n")
    config = settings(p1=provider(folder))

    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(added=100_000, active=100_000)
    write(folder / "keys-0.txt", "")
    report = await run_sync(config, store)
    assert report.providers[0].keys == SyncChanges(removed=10_000, active=90_000)
    assert len((await store.snapshot()).keys) == 90_000


# -- the CLI -------------------------------------------------------------------------------


def write_config(tmp_path: Path, database_url: str) -> Path:
    write(tmp_path / "keys" / "a.txt", f"{KEYS[0]}\n{KEYS[1]}\nbad-key\n")
    data = {
        "database": {"url": database_url},
        "providers": {
            "p1": provider(tmp_path / "keys"),
            "g1": provider(
                tmp_path / "keys",
                provider_type="gemini",
                shared_key_status=True,
                api_base_url="https://generativelanguage.googleapis.com",
                models={"m1": {"endpoint_suffix": ":generateContent"}},
                access_control={"gateway_access_token": TOKEN + "-gemini"},
            ),
        },
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_upgrade_worker_once_and_status(db_url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, db_url))
    runner = CliRunner()

    upgrade = runner.invoke(main, ["db", "upgrade", "--config", config])
    assert upgrade.exit_code == 0, upgrade.output
    assert "schema up to date" in upgrade.output

    once = runner.invoke(main, ["worker", "--once", "--config", config])
    assert once.exit_code == 0, once.output
    assert "p1: keys +2 added, -0 removed, 0 restored, 2 active" in once.output
    assert "a.txt:3: … is not a key (too short" in once.output
    assert KEYS[0] not in once.output

    table = runner.invoke(main, ["status", "--config", config])
    assert table.exit_code == 0, table.output
    lines = [line.split() for line in table.output.splitlines()]
    assert lines == [
        ["PROVIDER", "MODEL", "STATUS", "STATE", "COUNT", "NEXT", "CHECK"],
        ["g1", "shared", "untested", "untested", "2", *lines[1][5:]],
        ["p1", "m1", "untested", "untested", "2", *lines[2][5:]],
    ]
    as_json = json.loads(runner.invoke(main, ["status", "--json", "--config", config]).output)
    assert [(r["provider"], r["model"], r["state"], r["count"]) for r in as_json["keys"]] == [
        ("g1", "shared", "untested", 2),
        ("p1", "m1", "untested", 2),
    ]
    assert as_json["breakers"] == []
    assert as_json["proxies"] == []


@pytest.mark.parametrize("command", [["db", "upgrade"], ["worker", "--once"], ["status"]])
def test_cli_config_error_exits_2_without_traceback(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  p1:\n    provider_typo: openai_like\n")
    result = CliRunner().invoke(main, [*command, "--config", str(path)])
    assert result.exit_code == 2
    assert "providers.p1" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["db", "upgrade"], ["worker", "--once"], ["status"]])
def test_cli_database_unreachable_exits_1_with_the_url_masked(
    command: list[str], tmp_path: Path
) -> None:
    url = "postgresql://gateway:db-password-1234@127.0.0.1:9/llmgateway"
    config = str(write_config(tmp_path, url))
    result = CliRunner().invoke(main, [*command, "--config", config])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "cannot use the database at postgresql+asyncpg://gateway:***@127.0.0.1:9/llmgateway:"
    )
    assert "db-password" not in result.output


def test_cli_help_names_the_options() -> None:
    runner = CliRunner()
    assert "--once" in runner.invoke(main, ["worker", "--help"]).output
    assert "--json" in runner.invoke(main, ["status", "--help"]).output
    assert "migrations" in runner.invoke(main, ["db", "upgrade", "--help"]).output
