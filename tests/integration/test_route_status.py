"""`llmgateway status` and the console's overview show each route's targets and whether the plan
would try them now, as the store has it: keys that may serve each target, its provider's
breaker, a disabled provider. Real stores (SQLite, PostgreSQL), real files synced, the real
command and the console over a loopback socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from tests.console_rig import ADMIN_TOKEN, console_rig
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, ManualClock

from llmgateway.cli.main import main
from llmgateway.config.settings import Settings
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store
from llmgateway.store.tables import key_status, keys, providers
from llmgateway.testing.configs import two_providers, write_keys

ROUTES = {
    "fast": {
        "targets": [
            {"provider": "openai", "model": "gpt-4o-mini", "weight": 2},
            {"provider": "gemini", "model": "gemini-2.5-flash", "priority": 1},
        ]
    }
}


def document(tmp_path: Path, db_url: str) -> dict[str, Any]:
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-01", "sk-good-openai-02"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-01"])
    found = two_providers(
        tmp_path,
        "http://127.0.0.1:9",
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        gateway={"tokens": [{"name": "app", "token": "gw-app-status-0000001", "routes": ["*"]}]},
        database={"url": db_url},
        admin={"token": ADMIN_TOKEN, "port": 0},
    )
    return found | {"routes": ROUTES}


async def set_statuses(store: Store, provider: str, status: str) -> None:
    ids = sa.select(keys.c.id).join(providers).where(providers.c.name == provider)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status).where(key_status.c.key_id.in_(ids)).values(status=status)
        )


def status_json(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output)
    return found


def eligibility(report: dict[str, Any]) -> dict[str, tuple[int, bool, str]]:
    return {r["target"]: (r["usable"], r["eligible"], r["why"]) for r in report["routes"]}


async def test_status_and_the_overview_show_which_targets_are_eligible(
    tmp_path: Path, db_url: str
) -> None:
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(document(tmp_path, db_url)))
    settings = Settings.model_validate(document(tmp_path, db_url))
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        report = await asyncio.to_thread(status_json, config)
        assert eligibility(report) == {  # untested keys serve by default
            "openai/gpt-4o-mini": (2, True, ""),
            "gemini/gemini-2.5-flash": (1, True, ""),
        }
        await set_statuses(store, "openai", "invalid_key")
        await store.save_breakers({"gemini": (2, 0)})
        report = await asyncio.to_thread(status_json, config)
        assert eligibility(report) == {
            "openai/gpt-4o-mini": (0, False, "no usable key"),
            "gemini/gemini-2.5-flash": (1, False, "breaker open"),
        }
        text = await asyncio.to_thread(
            CliRunner().invoke, main, ["status", "--config", str(config)]
        )
        lines = [line.split() for line in text.output.splitlines()]
        assert [
            "fast",
            "openai/gpt-4o-mini",
            "0",
            "2",
            "0",
            "-",
            "no:",
            "no",
            "usable",
            "key",
        ] in lines

        await set_statuses(store, "openai", "valid")
        async with console_rig(settings, store, ManualClock(1_000_000.0)) as rig:
            page = await rig.get("/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert page.status == 200
        assert 'data-target="fast openai/gpt-4o-mini"' in page.text
        row = page.text.split('data-target="fast gemini/gemini-2.5-flash"', 1)[1].split("</tr>")[0]
        assert "no: breaker open" in row
        assert "<td>open</td>" in row
