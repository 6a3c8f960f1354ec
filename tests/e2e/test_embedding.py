"""An app from `create_app` embedded in another process (here: pytest) leaves that process's
garbage collector alone; only the CLI's own processes tune it."""

from __future__ import annotations

import gc
from pathlib import Path

from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import chaos_settings, start_gateway


async def test_an_embedded_gateway_does_not_retune_the_garbage_collector(tmp_path: Path) -> None:
    write_keys(tmp_path / "keys" / "openai", ["sk-embedded-00000000-abcdefghijkl"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-embedded-00000000-abcdefghij"])
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with FakeUpstream() as fake, start_gateway(chaos_settings(tmp_path, fake)) as running:
        assert running.gateway.readiness.pool_loaded
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() == frozen
