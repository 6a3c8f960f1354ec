"""A SQLite store file deleted or replaced under a running gateway: `/readyz` turns 503 and says
why, while the pool goes on serving from memory. And `Store.file_problem()` on its own, on both
databases."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import MetricsSettings
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, eventually, gateway_settings

METRICS_TOKEN = "metrics-token-store-file-01"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def readyz_until_unready(http: httpx.AsyncClient, url: str) -> httpx.Response:
    """`/readyz` (with the metrics token) polled until it answers 503; fails after 10 s."""
    answers: list[httpx.Response] = []

    async def unready() -> bool:
        auth = {"authorization": f"Bearer {METRICS_TOKEN}"}
        answers.append(await http.get(f"{url}/readyz", headers=auth))
        return answers[-1].status_code == 503

    await eventually(unready, within=10, step=0.05, what="/readyz answering 503")
    return answers[-1]


def settings_for(tmp_path: Path, fake: FakeUpstream) -> Any:
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    return gateway_settings(tmp_path, fake).model_copy(
        update={"metrics": MetricsSettings(access_token=METRICS_TOKEN)}
    )


async def lose_the_file(tmp_path: Path, fake: FakeUpstream, how: str) -> tuple[Any, int]:
    """Serve, delete or replace the SQLite file, and return (/readyz body, a chat's status)."""
    settings = settings_for(tmp_path, fake)
    database = tmp_path / "gw.db"
    async with (
        running(create_app(settings, rng=random.Random(5))) as url,
        httpx.AsyncClient() as http,
    ):
        ready = await http.get(
            f"{url}/readyz", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert ready.status_code == 200, ready.text
        if how == "deleted":
            database.unlink()
        else:
            copy = tmp_path / "restored.db"
            shutil.copyfile(database, copy)
            os.replace(copy, database)
        unready = await readyz_until_unready(http, url)
        assert unready.status_code == 503, unready.text
        plain = await http.get(f"{url}/readyz")  # without the token: the reason, no details
        assert plain.status_code == 503
        assert plain.json() == {"ready": False, "problem": unready.json()["problem"]}
        chat = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            json=CHAT,
        )
    return unready.json(), chat.status_code


async def test_a_deleted_store_file_makes_readyz_say_so(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    body, chat = await lose_the_file(tmp_path, fake, "deleted")
    assert body["ready"] is False
    assert body["store_reachable"] is False
    assert body["problem"].startswith(
        f"the SQLite file {tmp_path / 'gw.db'} was deleted while in use"
    )
    assert chat == 200  # the pool keeps serving from memory
    said = (r for r in caplog.records if r.getMessage().startswith("store: "))
    warnings = [r for r in said if "was deleted while in use" in r.getMessage()]
    assert len(warnings) == 1, "one warning per change, not one per refresh"
    assert warnings[0].levelname == "WARNING"


async def test_a_replaced_store_file_makes_readyz_say_so(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    body, chat = await lose_the_file(tmp_path, fake, "replaced")
    assert body["ready"] is False
    assert body["problem"].startswith(
        f"the SQLite file {tmp_path / 'gw.db'} was replaced by another file while in use"
    )
    assert "restart" in body["problem"]
    assert chat == 200


async def test_file_problem_of_a_sqlite_store(tmp_path: Path) -> None:
    database = tmp_path / "s.db"
    async with await Store.open(f"sqlite:///{database}") as store:
        await store.upgrade()
        assert store.file_problem() is None
        moved = tmp_path / "moved.db"
        database.rename(moved)
        assert store.file_problem() is not None
        assert "was deleted while in use" in (store.file_problem() or "")
        moved.rename(database)  # put back: the same file again
        assert store.file_problem() is None
        shutil.copyfile(database, moved)
        os.replace(moved, database)
        assert "was replaced by another file" in (store.file_problem() or "")


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.postgres
async def test_file_problem_is_none_on_postgresql(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        assert store.file_problem() is None


async def test_no_new_connection_opens_a_replaced_sqlite_file(tmp_path: Path) -> None:
    """A connection opened on the replacing file would take over the old file's -shm (same
    path) and truncate what the open connections have mapped: SIGBUS. The store refuses it."""
    database = tmp_path / "s.db"
    async with await Store.open(f"sqlite:///{database}") as store:
        await store.upgrade()
        copy = tmp_path / "copy.db"
        shutil.copyfile(database, copy)
        os.replace(copy, database)
        await store.engine.dispose()  # the next statement needs a new connection
        with pytest.raises(sa.exc.OperationalError, match="was replaced by another file"):
            async with store.engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
