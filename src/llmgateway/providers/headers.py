"""Which headers cross the gateway, each way.

Toward the upstream, an exact allow-list per provider type and wire format: what the official
SDKs send to describe the request (content type, accepted types, the SDK's own `x-stainless-*`
and `x-goog-api-client`, beta flags, `anthropic-version`, idempotency keys) and nothing
credential-, account- or hop-related. The key goes in its own header (`providers.auth_header`),
`accept-encoding` is always `identity` (bodies are read to classify them), and `x-request-id`
is the gateway's.

Toward the client, everything but hop-by-hop headers, cookies, the upstream's identity, and
what belongs to the key's account: its organization, project and rate-limit counters.
"""

from __future__ import annotations

from collections.abc import Mapping

_COMMON = frozenset({"content-type", "accept", "user-agent", "idempotency-key"})
_ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    # OpenRouter reads http-referer and x-title to attribute an app; nothing else does
    ("openai_like", "openai"): _COMMON | {"openai-beta", "http-referer", "x-title"},
    ("gemini", "openai"): _COMMON | {"openai-beta"},
    ("gemini", "gemini"): _COMMON | {"x-goog-api-client"},
    ("anthropic", "openai"): _COMMON | {"openai-beta"},
    ("anthropic", "anthropic"): _COMMON | {"anthropic-version", "anthropic-beta"},
}
_SDK_PREFIX = "x-stainless-"  # the OpenAI SDKs' own description of themselves

_DROPPED = frozenset(
    {
        # hop-by-hop, and what the gateway sets itself
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-request-id",
        # the upstream's own identity and cookies
        "set-cookie",
        "server",
        "date",
        "via",
        "alt-svc",
        # the key's account
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
    }
)
_DROPPED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")  # the key's own limits


def allowed_names(provider_type: str, surface: str) -> frozenset[str]:
    """The client headers forwarded for a provider type and wire format (besides the SDK's
    `x-stainless-*`)."""
    return _ALLOWED[(provider_type, surface)]


def forwarded(
    allowed: frozenset[str], client: Mapping[str, str], request_id: str
) -> dict[str, str]:
    """The headers sent upstream for a client's headers (names lower-case, as servers give
    them): the allowed ones, `accept-encoding: identity` and the request id."""
    headers = {
        name: value
        for name, value in client.items()
        if name in allowed or name.startswith(_SDK_PREFIX)
    }
    headers["accept-encoding"] = "identity"
    headers["x-request-id"] = request_id
    return headers


def relayed(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers (lower-case names) that reach the client."""
    return [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()
        if name not in _DROPPED and not name.startswith(_DROPPED_PREFIXES)
    ]
