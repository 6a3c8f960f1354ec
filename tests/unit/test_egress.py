"""Egress binding: direct, static, and stealth rendezvous hashing over healthy proxies."""

from __future__ import annotations

from typing import Any

import pytest

from llmgateway.config.settings import OpenAILikeProvider
from llmgateway.core.egress import DIRECT, NoHealthyProxyError, egress_for

PROXIES = [f"http://10.0.0.{i}:3128" for i in range(1, 6)]
KEYS = [f"sk-key-{i:05d}-abcdefgh" for i in range(2000)]


def provider(**proxy_config: Any) -> OpenAILikeProvider:
    return OpenAILikeProvider.model_validate(
        {
            "provider_type": "openai_like",
            "keys_path": "keys",
            "api_base_url": "https://api.example.com/v1",
            "default_model": "m",
            "models": {"m": {"endpoint_suffix": "/chat/completions"}},
            "proxy_config": proxy_config,
        }
    )


def test_no_proxy_is_direct_and_static_is_the_static_url() -> None:
    assert egress_for(provider(), KEYS[0], PROXIES) == DIRECT
    static = provider(mode="static", static_url="http://u:p@10.9.9.9:8080")
    assert egress_for(static, KEYS[0], []) == "http://u:p@10.9.9.9:8080"


def test_stealth_binds_each_key_stably_and_spreads_keys() -> None:
    stealth = provider(mode="stealth", pool_list_path="proxies")
    first = {key: egress_for(stealth, key, PROXIES) for key in KEYS}
    assert first == {key: egress_for(stealth, key, list(reversed(PROXIES))) for key in KEYS}
    counts = {proxy: list(first.values()).count(proxy) for proxy in PROXIES}
    assert all(250 < n < 550 for n in counts.values()), counts  # about 400 each


def test_when_a_proxy_dies_only_its_keys_move() -> None:
    stealth = provider(mode="stealth", pool_list_path="proxies")
    before = {key: egress_for(stealth, key, PROXIES) for key in KEYS}
    dead = PROXIES[2]
    after = {key: egress_for(stealth, key, [p for p in PROXIES if p != dead]) for key in KEYS}
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == dead}
    assert dead not in after.values()
    back = {key: egress_for(stealth, key, PROXIES) for key in KEYS}
    assert back == before  # the proxy coming back takes its keys back


def test_stealth_without_a_healthy_proxy_refuses_to_go_direct() -> None:
    stealth = provider(mode="stealth", pool_list_path="proxies")
    with pytest.raises(NoHealthyProxyError, match="no healthy proxy"):
        egress_for(stealth, KEYS[0], [])
