"""The weak-token check: placeholders (ours, copied from our own files) and short tokens, the
settings they sit in, what counts as loopback, and that every token our files print is known."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from llmgateway.config.settings import Settings
from llmgateway.config.weak_tokens import (
    MIN_TOKEN_LENGTH,
    is_loopback,
    token_weakness,
    weak_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
STRONG = "tok-strong-0123456789abcdef"


@pytest.mark.parametrize(
    "token",
    [
        "change-me-openai-token",
        "CHANGE-ME",
        "Change-Me-but-it-is-long-enough-now",
        "choose-a-long-random-token",
        "a-long-random-token",
        "your-gemini-gateway-token",
        "demo-openai-token",
        "demo-gemini-token",
        "   ",
    ],
)
def test_placeholders(token: str) -> None:
    assert token_weakness(token) == "a placeholder token"


@pytest.mark.parametrize(("token", "length"), [("x", 1), ("tok-o-1234", 10), ("a" * 15, 15)])
def test_short_tokens(token: str, length: int) -> None:
    assert token_weakness(token) == f"a token of {length} characters, at least 16 needed"


@pytest.mark.parametrize("token", ["b" * MIN_TOKEN_LENGTH, secrets.token_urlsafe(32), STRONG])
def test_strong_tokens(token: str) -> None:
    assert token_weakness(token) is None


def provider(**access: Any) -> dict[str, Any]:
    return {
        "provider_type": "openai_like",
        "keys_path": "keys/x",
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m",
        "models": {"m": {"endpoint_suffix": "/chat/completions"}},
        "access_control": access,
    }


def test_weak_tokens_names_each_setting_and_never_a_value() -> None:
    settings = Settings.model_validate(
        {
            "metrics": {"access_token": "metrics-short"},
            "providers": {
                "a": provider(gateway_access_token="change-me-a"),
                "b": provider(gateway_access_tokens=[STRONG + "-b", "short-b"]),
                "c": provider(gateway_access_token=STRONG + "-c"),
                "off": {**provider(gateway_access_token="x"), "enabled": False},
            },
        }
    )
    assert weak_tokens(settings) == [
        ("providers.a.access_control.gateway_access_token", "a placeholder token"),
        (
            "providers.b.access_control.gateway_access_tokens.1",
            "a token of 7 characters, at least 16 needed",
        ),
        ("metrics.access_token", "a token of 13 characters, at least 16 needed"),
    ]


def test_an_empty_metrics_token_is_not_weak_it_is_off() -> None:
    settings = Settings.model_validate({"providers": {"a": provider(gateway_access_token=STRONG)}})
    assert settings.metrics.access_token == ""
    assert weak_tokens(settings) == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("gateway.internal", False),
        ("localhost.evil.example", False),
    ],
)
def test_what_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def tokens_in_our_files() -> set[str]:
    """Every token value our shipped files show for people to copy."""
    found: set[str] = set()
    env = (ROOT / "examples" / ".env.example").read_text()
    found |= set(re.findall(r"^\w*TOKEN=(\S+)", env, re.MULTILINE))
    for config in [ROOT / "config" / "providers.yaml", *(ROOT / "examples").glob("*.yaml")]:
        text = config.read_text()
        found |= set(re.findall(r"token\w*: \$\{\w+:-([^}]+)\}", text))
        found |= set(re.findall(r"export \w*TOKEN=(\S+)", text))
    for text in ((ROOT / "README.md").read_text(), (ROOT / "docker-compose.yml").read_text()):
        found |= set(re.findall(r"export \w*TOKEN=([\w-]+)", text))
        found |= set(re.findall(r'api_key="([\w-]+)"', text))
    return found


def test_every_token_our_files_show_is_a_placeholder() -> None:
    found = tokens_in_our_files()
    assert {"change-me-openai-token", "choose-a-long-random-token"} <= found
    weakness = {token: token_weakness(token) for token in found}
    assert weakness == dict.fromkeys(found, "a placeholder token")
