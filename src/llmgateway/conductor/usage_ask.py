"""Whether a request asks the upstream for its stream's usage on the client's behalf
(`gateway_policy.stream_usage`), and the request as it is then sent (`core.stream_usage`)."""

from __future__ import annotations

from llmgateway.conductor.call import Call
from llmgateway.config.settings import StreamUsage
from llmgateway.core.stream_usage import inject_include_usage

_STREAMED_WITH_USAGE = ("/chat/completions", "/completions")
"""The OpenAI-format paths whose streams report usage only when asked."""
_ACCEPTS = frozenset({"openai_like", "gemini"})
"""Provider types known to take `stream_options` (`auto`): OpenAI-compatible servers, and
Gemini's OpenAI-compatible endpoint."""


def ask_usage(call: Call, options: bool) -> None:
    """Ask a streamed OpenAI-format chat/completions `call` for its usage chunk when the
    provider's `stream_usage` says so and the client set no `stream_options` itself (`options`);
    the relay then removes what the option adds (`call.strip_usage`)."""
    if not call.stream or options or call.api != "openai":
        return
    settings = call.provider.settings
    wanted = settings.gateway_policy.stream_usage
    if wanted is StreamUsage.NEVER:
        return
    if wanted is StreamUsage.AUTO and settings.provider_type not in _ACCEPTS:
        return
    if not call.path.endswith(_STREAMED_WITH_USAGE):
        return
    body = inject_include_usage(call.body)
    if body is not None:
        call.body = body
        call.strip_usage = True
