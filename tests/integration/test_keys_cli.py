"""`llmgateway keys list|show` against real stores (SQLite, PostgreSQL, PostgreSQL through
PgBouncer in transaction mode): keys synced from real files, statuses written by a real Keeper
round against the fake upstream over HTTP and by the gateway's write-behind writer. No output
ever holds a key in full."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.helpers import run_cli
from tests.pgbouncer import Route, routes

from llmgateway.cli.main import main
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.config.load import load_settings
from llmgateway.core.outcomes import ErrorReason, KeyStatus
from llmgateway.core.pool_keys import StatusChange
from llmgateway.keeper.run import Keeper
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import KeyFilter
from llmgateway.store import Store
from llmgateway.store.key_list import by_fingerprint, count_matching, listing_pages
from llmgateway.testing import FakeUpstream
from llmgateway.transport.upstream import HttpUpstream

GOOD = [f"sk-good-{i:04d}-abcdefghijklmnop" for i in range(3)]
INVALID = "sk-invalid-0001-abcdefghijklmnop"
NOQUOTA = "sk-noquota-0001-abcdefghijklmnop"
GEMINI = ["AIza-good-gemini-000000000001", "AIza-invalid-gemini-0000000001"]
ALL_KEYS = [*GOOD, INVALID, NOQUOTA, *GEMINI]


def write_files(folder: Path) -> None:
    """Two providers' key folders, with comments, commas and a second file."""
    openai = folder / "keys" / "openai"
    openai.mkdir(parents=True)
    (openai / "a.txt").write_text(f"# team A\n{GOOD[0]}\n\n{GOOD[1]}, {INVALID}\n")
    (openai / "b.txt").write_text(f"{GOOD[2]}\n# quota keys\n{NOQUOTA}\n")
    gemini = folder / "keys" / "gemini"
    gemini.mkdir(parents=True)
    (gemini / "keys.txt").write_text("\n".join(GEMINI) + "\n")


def write_config(folder: Path, url: str, fake: FakeUpstream | None = None) -> Path:
    base = fake.openai_base if fake is not None else "http://127.0.0.1:9/v1"
    gemini_base = fake.gemini_base if fake is not None else "http://127.0.0.1:9"
    data = {
        "database": {"url": url},
        "providers": {
            "openai": {
                "provider_type": "openai_like",
                "keys_path": str(folder / "keys" / "openai"),
                "api_base_url": base,
                "default_model": "gpt-4o-mini",
                "models": {
                    m: {"endpoint_suffix": "/chat/completions"} for m in ("gpt-4o-mini", "gpt-4o")
                },
                "access_control": {"gateway_access_token": "gw-token-openai-0001"},
                "worker_health_policy": {"batch_delay_sec": 0, "verification_attempts": 0},
            },
            "gemini": {
                "provider_type": "gemini",
                "keys_path": str(folder / "keys" / "gemini"),
                "api_base_url": gemini_base,
                "default_model": "gemini-2.5-flash",
                "shared_key_status": True,
                "models": {"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
                "access_control": {"gateway_access_token": "gw-token-gemini-0001"},
                "worker_health_policy": {"batch_delay_sec": 0, "verification_attempts": 0},
            },
        },
    }
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def ainvoke(*args: str) -> str:
    """`invoke` from a test running an event loop (the command runs its own, in a thread)."""
    return await asyncio.to_thread(invoke, *args)


def assert_no_secret(text: str) -> None:
    for key in ALL_KEYS:
        assert key not in text


async def probed(config: Path, fake: FakeUpstream) -> None:
    """One sync and one real probe round: the fake upstream answers by key name."""
    settings = load_settings(config)
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        upstream = HttpUpstream()
        try:
            await Keeper(settings, store, upstream).probe_round()
        finally:
            await upstream.close()


def table(output: str) -> list[list[str]]:
    return [line.split("  ") for line in output.splitlines()]


def rows_of(output: str) -> dict[tuple[str, str], dict[str, str]]:
    """`keys list` text by (fingerprint, model): column name → value."""
    lines = output.splitlines()
    header = lines[0]
    starts = [header.index(name) for name in _HEADER]
    found = {}
    for line in lines[1:]:
        if line.startswith("…") or not line.strip():
            continue
        cells = [
            line[start:end].strip() for start, end in itertools.pairwise([*starts, len(line) + 1])
        ]
        row = dict(zip(_HEADER, cells, strict=True))
        found[(row["FINGERPRINT"], row["MODEL"])] = row
    return found


_HEADER = (
    "FINGERPRINT", "KEY", "PROVIDER", "MODEL", "STATE", "STATUS", "CODE",
    "FAILING SINCE", "NEXT CHECK", "SOURCE", "LAST ERROR",
)  # fmt: skip


async def test_list_and_show_after_a_real_probe_round(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url, fake))
    await probed(Path(config), fake)

    listed = await ainvoke("keys", "list", "--config", config)
    assert_no_secret(listed)
    rows = rows_of(listed)
    assert len(rows) == 5 * 2 + 2  # openai: 5 keys × 2 models; gemini: 2 keys, shared
    bad = rows[(fingerprint(INVALID), "gpt-4o")]
    openai = tmp_path / "keys" / "openai"
    assert bad["KEY"] == mask(INVALID)
    assert (bad["STATE"], bad["STATUS"], bad["CODE"]) == ("invalid", "invalid_key", "401")
    assert bad["SOURCE"] == f"{openai / 'a.txt'}:4"
    assert bad["FAILING SINCE"] != "-"
    assert bad["LAST ERROR"] != "-"
    quota = rows[(fingerprint(NOQUOTA), "gpt-4o-mini")]
    assert (quota["STATE"], quota["STATUS"], quota["SOURCE"]) == (
        "no_quota",
        "no_quota",
        f"{openai / 'b.txt'}:3",
    )
    good = rows[(fingerprint(GOOD[1]), "gpt-4o")]
    assert (good["STATE"], good["STATUS"], good["CODE"], good["FAILING SINCE"]) == (
        "healthy",
        "valid",
        "200",
        "-",
    )
    assert good["SOURCE"] == f"{openai / 'a.txt'}:4"  # the same line as INVALID
    shared = rows[(fingerprint(GEMINI[1]), "shared")]
    assert (shared["PROVIDER"], shared["STATUS"]) == ("gemini", "invalid_key")

    dead = rows_of(await ainvoke("keys", "list", "--config", config, "--status", "invalid"))
    assert set(dead) == {
        (fingerprint(INVALID), "gpt-4o-mini"),
        (fingerprint(INVALID), "gpt-4o"),
        (fingerprint(GEMINI[1]), "shared"),
    }
    narrowed = await ainvoke(
        "keys", "list", "--config", config, "--provider", "openai", "--model", "gpt-4o",
        "--status", "no_quota", "--status", "invalid_key",
    )  # fmt: skip
    assert set(rows_of(narrowed)) == {
        (fingerprint(INVALID), "gpt-4o"),
        (fingerprint(NOQUOTA), "gpt-4o"),
    }
    assert set(rows_of(await ainvoke("keys", "list", "--config", config, "--model", "shared"))) == {
        (fingerprint(k), "shared") for k in GEMINI
    }
    unauthorised = await ainvoke("keys", "list", "--config", config, "--status-code", "401")
    assert set(rows_of(unauthorised)) == {
        (fingerprint(INVALID), m) for m in ("gpt-4o-mini", "gpt-4o")
    }
    by_fingerprint = await ainvoke(
        "keys", "list", "--config", config, "--search", fingerprint(NOQUOTA)[:8]
    )
    assert set(rows_of(by_fingerprint)) == {
        (fingerprint(NOQUOTA), m) for m in ("gpt-4o-mini", "gpt-4o")
    }
    by_suffix = await ainvoke(  # every openai key here ends in mnop
        "keys", "list", "--config", config, "--search", mask(GOOD[0]), "--limit", "0"
    )
    assert {row[0] for row in rows_of(by_suffix)} == {fingerprint(k) for k in ALL_KEYS[:5]}
    both = ("--status-code", "400", "--provider", "gemini")  # Gemini refuses a key with a 400
    assert set(rows_of(await ainvoke("keys", "list", "--config", config, *both))) == {
        (fingerprint(GEMINI[1]), "shared")
    }
    none = await ainvoke("keys", "list", "--config", config, "--provider", "nobody")
    assert none.strip() == "no keys match --provider nobody"

    limited = await ainvoke("keys", "list", "--config", config, "--limit", "3")
    assert len(rows_of(limited)) == 3
    assert limited.splitlines()[-1].startswith("… and 9 more match; --limit 0 prints them all")
    everything = await ainvoke("keys", "list", "--config", config, "--limit", "0")
    assert len(rows_of(everything)) == 12
    assert "more match" not in everything

    shown = await ainvoke("keys", "show", "--config", config, fingerprint(INVALID)[:6])
    assert_no_secret(shown)
    lines = shown.splitlines()
    assert lines[0].split() == [fingerprint(INVALID), mask(INVALID), "provider", "openai"]
    assert lines[1].strip() == f"in the files at {openai / 'a.txt'}:4"
    models = {line.split()[0]: line.split() for line in lines[4:]}
    assert set(models) == {"gpt-4o-mini", "gpt-4o"}
    assert models["gpt-4o"][1:4] == ["invalid", "invalid_key", "401"]


async def test_json_shapes(db_url: str, tmp_path: Path, fake: FakeUpstream) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url, fake))
    await probed(Path(config), fake)

    listed = json.loads(await ainvoke("keys", "list", "--config", config, "--json", "--limit", "5"))
    assert_no_secret(json.dumps(listed))
    assert set(listed) == {"keys", "shown", "more"}
    assert (listed["shown"], listed["more"], len(listed["keys"])) == (5, 7, 5)
    assert set(listed["keys"][0]) == {
        "fingerprint", "key", "provider", "model", "state", "status", "reason", "status_code",
        "last_error", "failing_since", "cooldown_until", "next_check_at", "last_checked_at",
        "source",
    }  # fmt: skip
    dead = json.loads(
        await ainvoke("keys", "list", "--config", config, "--json", "--status", "invalid_key")
    )
    assert dead["more"] == 0
    by_model = {(r["fingerprint"], r["model"]): r for r in dead["keys"]}
    row = by_model[(fingerprint(INVALID), "gpt-4o")]
    assert (row["key"], row["state"], row["status"], row["status_code"]) == (
        mask(INVALID), "invalid", "invalid_key", 401,
    )  # fmt: skip
    assert row["source"] == f"{tmp_path / 'keys' / 'openai' / 'a.txt'}:4"
    assert isinstance(row["failing_since"], float)
    assert 0 < len(row["last_error"]) <= 500

    shown = json.loads(
        await ainvoke("keys", "show", "--config", config, "--json", fingerprint(NOQUOTA))
    )
    assert shown["more"] == 0
    (key,) = shown["keys"]
    assert set(key) == {
        "fingerprint", "key", "provider", "provider_enabled", "source", "in_files",
        "added_at", "removed_at", "disabled_at", "models",
    }  # fmt: skip
    assert (key["fingerprint"], key["key"], key["in_files"]) == (
        fingerprint(NOQUOTA), mask(NOQUOTA), True,
    )  # fmt: skip
    assert {m["model"]: m["status"] for m in key["models"]} == {
        "gpt-4o-mini": "no_quota",
        "gpt-4o": "no_quota",
    }
    assert_no_secret(json.dumps(shown))


def _colliding(count: int = 2, digits: int = 4) -> tuple[str, list[str]]:
    """A fingerprint prefix of `digits` hex shared by `count` generated keys."""
    seen: dict[str, list[str]] = {}
    for n in itertools.count():
        key = f"sk-collide-{n:06d}-abcdefghijkl"
        group = seen.setdefault(fingerprint(key)[:digits], [])
        group.append(key)
        if len(group) == count:
            return fingerprint(key)[:digits], group
    raise AssertionError("unreachable")


async def test_show_lists_every_key_sharing_a_prefix_and_removed_ones(
    db_url: str, tmp_path: Path
) -> None:
    prefix, pair = _colliding()
    folder = tmp_path / "keys" / "openai"
    folder.mkdir(parents=True)
    (folder / "k.txt").write_text(f"{pair[0]}\n{pair[1]}\n{GOOD[0]}\n")
    (tmp_path / "keys" / "gemini").mkdir()
    config = str(write_config(tmp_path, db_url))
    await ainvoke("db", "upgrade", "--sync", "--config", config)

    shown = await ainvoke("keys", "show", "--config", config, prefix)
    assert shown.splitlines()[0] == f"2 keys have a fingerprint starting with {prefix}:"
    heads = [line.split()[0] for line in shown.splitlines() if line[:1] not in ("", " ")]
    assert heads[1:3] == [fingerprint(pair[0]), fingerprint(pair[1])]
    assert f"{folder / 'k.txt'}:1" in shown
    assert f"{folder / 'k.txt'}:2" in shown
    assert "give more digits to tell them apart" in shown
    assert pair[0] not in shown
    assert pair[1] not in shown

    one = await ainvoke("keys", "show", "--config", config, fingerprint(pair[1]).upper())
    assert one.splitlines()[0].split()[0] == fingerprint(pair[1])
    assert fingerprint(pair[0]) not in one

    (folder / "k.txt").write_text(f"{pair[0]}\n{GOOD[0]}\n")  # pair[1] leaves the files
    await ainvoke("db", "upgrade", "--sync", "--config", config)
    gone = await ainvoke("keys", "show", "--config", config, fingerprint(pair[1]))
    assert "removed from the files" in gone.splitlines()[1]
    assert f"last found at {folder / 'k.txt'}:2" in gone
    assert {line.split()[1] for line in gone.splitlines()[4:]} == {"removed"}
    moved = await ainvoke("keys", "show", "--config", config, fingerprint(GOOD[0]))
    assert f"in the files at {folder / 'k.txt'}:2" in moved  # it moved up a line

    runner = CliRunner()

    def run(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, main, list(args))

    missing = await run("keys", "show", "--config", config, "0000000000ff")
    if fingerprint(pair[0]).startswith("0000000000ff"):  # pragma: no cover (1 in 2**48)
        return
    assert missing.exit_code == 1
    assert "no key has a fingerprint starting with 0000000000ff" in missing.output
    short = await run("keys", "show", "--config", config, "abc")
    assert short.exit_code == 2
    assert "4 to 64 hex digits" in short.output
    not_hex = await run("keys", "show", "--config", config, "sk-collide")
    assert not_hex.exit_code == 2


async def test_gateway_writer_statuses_show_up(db_url: str, tmp_path: Path) -> None:
    """What the gateway's write-behind writer stores (no error text) is listed too."""
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url))
    settings = load_settings(Path(config))
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        ids = {row.secret: row.key_id for row in (await store.snapshot()).keys}
        writer = StatusWriter(store.apply_events)
        change = StatusChange(
            ids[GOOD[2]], "gpt-4o", KeyStatus.NO_ACCESS, ErrorReason.NO_ACCESS, None, 403
        )
        writer.offer("openai", change, store.clock())
        assert await writer.flush() == 1
    rows = rows_of(await ainvoke("keys", "list", "--config", config, "--status", "no_access"))
    assert {(k, r["STATUS"], r["CODE"], r["LAST ERROR"]) for k, r in rows.items()} == {
        ((fingerprint(GOOD[2]), m), "no_access", "403", "-") for m in ("gpt-4o-mini", "gpt-4o")
    }


@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
def test_through_pgbouncer_in_transaction_mode(
    route: Route, pg_database: str, tmp_path: Path
) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, route.url(pg_database)))
    invoke("db", "upgrade", "--sync", "--config", config)
    # a page of 2 rows and its successor each run in a transaction of their own
    listed = rows_of(invoke("keys", "list", "--config", config, "--limit", "0"))
    assert len(listed) == 12
    assert "more match" in invoke("keys", "list", "--config", config, "--limit", "4")
    shown = invoke("keys", "show", "--config", config, fingerprint(NOQUOTA)[:4])
    assert fingerprint(NOQUOTA) in shown


async def test_the_real_command_in_a_subprocess(tmp_path: Path) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}"))
    code, out, err = await run_cli("db", "upgrade", "--sync", "--config", config)
    assert code == 0, err
    code, out, err = await run_cli("keys", "list", "--config", config, "--provider", "gemini")
    assert code == 0, err
    assert set(rows_of(out)) == {(fingerprint(k), "shared") for k in GEMINI}
    code, shown, err = await run_cli("keys", "show", "--config", config, fingerprint(GEMINI[0])[:8])
    assert code == 0, err
    assert f"{tmp_path / 'keys' / 'gemini' / 'keys.txt'}:1" in shown
    assert_no_secret(out + err + shown)


async def test_pages_walk_every_row_once_in_key_order(store: Store) -> None:
    from llmgateway.config.settings import Settings

    providers = {
        name: {
            "provider_type": "openai_like",
            "keys_path": "/nonexistent",
            "api_base_url": "https://api.example.com/v1",
            "default_model": "m1",
            "models": {"m1": {"endpoint_suffix": "/x"}, "m2": {"endpoint_suffix": "/x"}},
            "access_control": {"gateway_access_token": f"gw-token-{name}-000001"},
        }
        for name in ("p1", "p2")
    }
    settings = Settings.model_validate({"providers": providers})
    await store.sync_providers(settings.providers)
    keys = [f"sk-many-{i:05d}-abcdefghijkl" for i in range(1100)]
    await store.sync_keys("p1", keys[:700], ["m1", "m2"], False)
    await store.sync_keys("p2", keys[700:], ["m1"], False)

    pages = [page async for page in listing_pages(store, KeyFilter(), page=250)]
    assert [len(p) for p in pages] == [250] * 7 + [50]  # 700 keys × 2 models + 400 × 1
    seen = [(r.key_id, r.model) for page in pages for r in page]
    assert seen == sorted(set(seen))
    assert len(seen) == 1800
    assert await count_matching(store, KeyFilter()) == 1800

    only = KeyFilter(provider="p1", model="m2")
    rows = [r async for page in listing_pages(store, only, limit=333, page=100) for r in page]
    assert len(rows) == 333
    assert {(r.provider, r.model) for r in rows} == {("p1", "m2")}
    assert await count_matching(store, only) == 700
    assert all(keys[0] not in repr(r) for r in rows)

    found, total = await by_fingerprint(store, fingerprint(keys[1000])[:12])
    assert total == 1
    assert [r.model for r in found[0]] == ["m1"]
