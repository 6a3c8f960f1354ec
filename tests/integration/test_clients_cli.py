"""`llmgateway clients` on SQLite and PostgreSQL: the lifecycle of a stored client (create,
list, show, update, disable, enable, rotate, delete), the config-declared client shown
read-only, bad input refused with a clear message, and the secret shown only at create and
rotate (the store holds its SHA-256 alone)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import sqlalchemy as sa
from tests.clients_rig import ainvoke, arun, secret_in, write_config

from llmgateway.core.clients import well_formed
from llmgateway.store import Store
from llmgateway.store.tables import clients


async def stored_rows(url: str) -> list[dict[str, object]]:
    async with await Store.open(url) as store, store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(clients))).all()
    return [dict(row._mapping) for row in rows]


async def test_lifecycle(db_url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, db_url))
    created = await ainvoke(
        "clients", "create", "team-a", "--config", config, "--routes", "fast,smart*",
        "--rpm", "60", "--max-parallel", "4", "--quota", "1000", "--period", "week",
        "--expires", "30d", "--allow-ip", "10.0.0.0/8", "--allow-ip", "192.168.1.7",
        "--notes", "the A team",
    )  # fmt: skip
    secret = secret_in(created)
    assert well_formed(secret)
    assert secret.startswith("sk-lgw_")
    assert "shown once" in created
    rows = await stored_rows(db_url)
    assert len(rows) == 1
    assert rows[0]["token_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in rows[0].values())

    listed = json.loads(await ainvoke("clients", "list", "--config", config, "--json"))
    by_name = {view["name"]: view for view in listed}
    assert by_name["ci-bot"]["source"] == "config"
    assert by_name["ci-bot"]["rpm"] == 100
    team = by_name["team-a"]
    assert team["source"] == "store"
    assert team["state"] == "enabled"
    assert team["routes"] == ["fast", "smart*"]
    assert team["rpm"] == 60
    assert team["max_parallel"] == 4
    assert team["quota"] == 1000
    assert team["period"] == "week"
    assert team["allow_ips"] == ["10.0.0.0/8", "192.168.1.7"]
    assert team["notes"] == "the A team"
    assert team["token"] == f"{secret[:11]}…{secret[-4:]}"
    assert team["expires_at"]
    table = await ainvoke("clients", "list", "--config", config)
    assert "team-a" in table
    assert "ci-bot" in table
    assert secret not in table

    await ainvoke("clients", "update", "team-a", "--config", config, "--rpm", "0",
                  "--expires", "never", "--allow-ip", "any")  # fmt: skip
    shown = json.loads(await ainvoke("clients", "show", "team-a", "--config", config, "--json"))
    assert shown["rpm"] is None
    assert shown["expires_at"] is None
    assert shown["allow_ips"] == []
    assert shown["max_parallel"] == 4  # untouched

    await ainvoke("clients", "disable", "team-a", "--config", config)
    assert "disabled" in await ainvoke("clients", "show", "team-a", "--config", config)
    await ainvoke("clients", "enable", "team-a", "--config", config)

    rotated = await ainvoke("clients", "rotate", "team-a", "--config", config, "--grace", "24h")
    fresh = secret_in(rotated)
    assert well_formed(fresh)
    assert fresh != secret
    row = (await stored_rows(db_url))[0]
    assert row["token_sha256"] == hashlib.sha256(fresh.encode()).hexdigest()
    assert row["previous_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    shown = json.loads(await ainvoke("clients", "show", "team-a", "--config", config, "--json"))
    assert shown["previous_token_until"] is not None
    everything = await ainvoke("clients", "list", "--config", config)
    assert fresh not in everything
    assert secret not in everything

    await ainvoke("clients", "delete", "team-a", "--config", config)
    gone = await arun("clients", "show", "team-a", "--config", config)
    assert gone.exit_code == 1
    assert "no client named 'team-a'" in gone.output
    assert await stored_rows(db_url) == []


async def test_config_clients_are_read_only(db_url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, db_url))
    for args in (
        ("update", "ci-bot", "--rpm", "5"),
        ("delete", "ci-bot"),
        ("disable", "ci-bot"),
        ("rotate", "ci-bot"),
        ("create", "ci-bot"),
    ):
        result = await arun("clients", *args, "--config", config)
        assert result.exit_code == 2, (args, result.output)
        assert "config file" in result.output
    shown = json.loads(
        (await arun("clients", "show", "ci-bot", "--config", config, "--json")).output
    )
    assert shown["source"] == "config"
    assert shown["token"] == "(sha256 in config)"


async def test_bad_input_is_refused_clearly(db_url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, db_url))
    cases = {
        ("create", "bad name!"): "NAME",
        ("create", "x", "--allow-ip", "10.0.0.300/8"): "not an IP address or CIDR range",
        ("create", "x", "--expires", "someday"): "not a date, time or span",
        ("create", "x", "--rpm", "-1"): "--rpm",
        ("rotate", "x", "--grace", "forever"): "--grace",
        ("update", "x"): "nothing to change",
    }
    for args, said in cases.items():
        result = await arun("clients", *args, "--config", config)
        assert result.exit_code == 2, (args, result.output)
        assert said in result.output, (args, result.output)
        assert "Traceback" not in result.output
    await ainvoke("clients", "create", "x", "--config", config)
    again = await arun("clients", "create", "x", "--config", config)
    assert again.exit_code == 1
    assert "exists already" in again.output
    missing = await arun("clients", "disable", "nobody", "--config", config)
    assert missing.exit_code == 1
    assert "no client named 'nobody'" in missing.output
