"""Chaos: one outbound proxy's address is rate-limited (every key behind it gets 429), under load.

What must hold: the egress cools down, not its keys (at most the very first 429 is blamed on its
key, before the pattern shows); keys behind the other proxy keep serving, so no client sees an
error; nothing is marked in the store beyond that first key.
"""

from __future__ import annotations

from pathlib import Path

from llmgateway.core.egress import egress_for
from llmgateway.testing.configs import write_keys
from llmgateway.testing.connect_proxy import ConnectProxy
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.chaos.load import Load
from tests.helpers import chaos_settings, eventually, start_gateway

# the proxies' ports are random, so which keys hash to which proxy is too: with 32 keys, fewer
# than 4 on one side happens about once in 400,000 runs (with 16 it was about once in 50)
KEYS = [f"sk-egress-key-{i:08d}" for i in range(32)]
GEMINI = [f"AIza-egress-key-{i:08d}" for i in range(4)]


async def test_an_ip_wide_429_cools_the_egress_not_the_keys(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with ConnectProxy() as limited, ConnectProxy() as fine:
        folder = tmp_path / "proxies"
        folder.mkdir()
        (folder / "list.txt").write_text(f"{limited.url}\n{fine.url}\n")
        write_keys(tmp_path / "keys" / "openai", KEYS)
        write_keys(tmp_path / "keys" / "gemini", GEMINI)
        proxy_config = {"mode": "stealth", "pool_list_path": str(folder)}
        settings = chaos_settings(tmp_path, fake, proxy_config=proxy_config)
        provider = settings.providers["openai"]
        urls = [limited.url, fine.url]
        behind = [k for k in KEYS if egress_for(provider, k, urls) == limited.url]
        assert 4 <= len(behind) <= len(KEYS) - 4
        for key in behind:  # the fake cannot see the proxy: limit every key that uses it
            fake.set_behavior(key, Behavior(rate_limited=True, retry_after=30.0))
        async with start_gateway(settings) as gw:
            guard = gw.gateway.providers["openai"].guard
            load = Load(gw.url, clients=10, kinds=("openai", "openai-stream"))
            load.start()
            await eventually(
                lambda: guard.egress_blocked(limited.url, gw.gateway.clock()) is not None, 10
            )
            await eventually(lambda: len(load.ok()) >= 300, within=30)
            await load.stop()

            assert load.errors() == []
            blamed = gw.cooldowns().get(("openai", "rate_limited"), 0.0)
            assert blamed <= 1.0, gw.cooldowns()
            assert sum(fake.calls(k) for k in behind) < len(load.ok()) / 4
