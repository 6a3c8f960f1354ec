"""Weak inbound tokens: placeholders and short tokens, which guard nothing off loopback.

Not a validation rule: a weak token is fine on loopback, so the commands that listen decide
(see `llmgateway.cli.tokens`), and `check-config` lists them as warnings.
"""

from __future__ import annotations

import ipaddress

from llmgateway.config.settings import Settings

MIN_TOKEN_LENGTH = 16
"""The shortest inbound token accepted on a listener other machines can reach."""
PLACEHOLDER_PREFIX = "change-me"
"""Any token starting with this (in any case) is a placeholder, like those of our examples."""
PLACEHOLDER_TOKENS = frozenset(
    {
        "choose-a-long-random-token",  # examples/minimal_config.yaml
        "a-long-random-token",  # the README's quickstart, before it made one
        "your-gemini-gateway-token",  # the README's quickstart
        "demo-openai-token",  # `llmgateway demo`, before its tokens were random
        "demo-gemini-token",
    }
)
"""Tokens printed in our own files for people to copy (besides the `change-me…` ones of
config/providers.yaml and examples/.env.example): a copy of one guards nothing."""


def token_weakness(token: str) -> str | None:
    """Why `token` is too weak to guard a listener off loopback, or None when it is not."""
    if not token.strip() or token.lower().startswith(PLACEHOLDER_PREFIX):
        return "a placeholder token"
    if token in PLACEHOLDER_TOKENS:
        return "a placeholder token"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"a token of {len(token)} characters, at least {MIN_TOKEN_LENGTH} needed"
    return None


def weak_tokens(settings: Settings) -> list[tuple[str, str]]:
    """Every inbound token that is weak, as (dotted path of its setting, why): the gateway
    tokens of each enabled provider, then the gateway-wide tokens, then the metrics token, then
    the console's `admin.token`.
    An empty metrics or admin token is not weak (it turns /metrics or the console off), nor is
    an empty `gateway_access_token` beside a list of tokens."""
    found: list[tuple[str, str]] = []
    for name, provider in settings.providers.items():
        if not provider.enabled:
            continue
        access = provider.access_control
        where = f"providers.{name}.access_control"
        if access.gateway_access_token:
            found.append((f"{where}.gateway_access_token", access.gateway_access_token))
        for i, token in enumerate(access.gateway_access_tokens):
            found.append((f"{where}.gateway_access_tokens.{i}", token))
    for i, entry in enumerate(settings.gateway.tokens):
        if entry.token is not None:  # a token_sha256 was generated, or is not ours to judge
            found.append((f"gateway.tokens.{i}.token", entry.token))
    if settings.metrics.access_token:
        found.append(("metrics.access_token", settings.metrics.access_token))
    if settings.admin.token:
        found.append(("admin.token", settings.admin.token))
    weak = [(path, token_weakness(token)) for path, token in found]
    return [(path, why) for path, why in weak if why is not None]


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only: 127.0.0.0/8, ::1 or
    `localhost` (any other name may resolve anywhere; `0.0.0.0` and `::` are everywhere)."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
