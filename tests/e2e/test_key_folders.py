"""Key folders end to end: a Kubernetes secret mount (keys reachable only through its links) is
synced at start-up and its key serves requests through the real gateway."""

from __future__ import annotations

import random
from pathlib import Path

import httpx2 as httpx

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, gateway_settings, kubernetes_mount

MOUNTED = "sk-good-k8s-secret-000000000001"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_key_in_a_kubernetes_secret_mount_serves(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    mount = tmp_path / "keys" / "openai"
    mount.mkdir(parents=True)
    kubernetes_mount(mount, "2024_01_01_10_00_00.123", MOUNTED + "\n")
    assert [p.name for p in mount.iterdir() if not p.name.startswith(".")] == ["keys.txt"]
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    app = create_app(gateway_settings(tmp_path, fake), rng=random.Random(2))
    async with running(app) as url, httpx.AsyncClient() as http:
        answers = [
            await http.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                json=CHAT,
            )
            for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert fake.calls(MOUNTED) == 3
