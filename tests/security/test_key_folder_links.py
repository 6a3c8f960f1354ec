"""A link in a key folder pointing out of it (at /etc/passwd, or at another team's key file) is
never read: the real gateway syncs the folder at start, serves requests over a real socket, and
neither the linked key nor anything of /etc/passwd is used, logged or answered."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import httpx2 as httpx
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import MetricsSettings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, gateway_settings

pytestmark = pytest.mark.security

OWN = "sk-good-own-key-00000000000001"
OTHERS = "sk-good-other-team-0000000001"
METRICS_TOKEN = "metrics-token-links-000001"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_links_out_of_the_key_folder_are_never_followed(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    folder = tmp_path / "keys" / "openai"
    write_keys(folder, [OWN])
    write_keys(tmp_path / "other-team", [OTHERS])
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    (folder / "borrowed.txt").symlink_to("../../other-team/keys.txt")
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake).model_copy(
        update={"metrics": MetricsSettings(access_token=METRICS_TOKEN)}
    )
    seen: list[str] = []
    async with (
        running(create_app(settings, rng=random.Random(4))) as url,
        httpx.AsyncClient() as http,
    ):
        for _ in range(6):
            answer = await http.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                json=CHAT,
            )
            assert answer.status_code == 200
            seen.append(answer.text)
        ready = await http.get(
            f"{url}/readyz", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
        )
        seen.append(ready.text)
    assert ready.json()["providers"]["openai"]["keys"] == 1
    assert fake.calls(OWN) == 6
    assert fake.calls(OTHERS) == 0
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{folder / 'passwd.txt'}: skipped, a link to outside the folder" in logged
    assert f"{folder / 'borrowed.txt'}: skipped, a link to outside the folder" in logged
    everything = logged + "\n".join(seen)
    assert ":x:0:0:" not in everything
    for line in Path("/etc/passwd").read_text().splitlines():
        assert line.partition(":")[2] not in everything
