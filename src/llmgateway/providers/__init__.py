"""Provider adapters: where a request goes, how the key is sent, how a key is probed, and the
error shapes of the three wire formats. Pure functions, called per request by the gateway.

`api` is the wire format the client spoke: `"openai"` (`/v1/…` with a Bearer token) or
`"gemini"` (native, `x-goog-api-key` or `?key=`) or `"anthropic"` (the Messages API,
`x-api-key`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from llmgateway.config.settings import ModelSettings, ProviderSettings
from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.providers import anthropic, gemini, openai
from llmgateway.providers.catalog import Catalog, is_pattern

Api = Literal["openai", "gemini", "anthropic"]


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """One HTTP request the Keeper sends to check a key."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Adapter:
    upstream_url: Callable[[str, str, str], str]
    probe_target: Callable[[str, str, ModelSettings], tuple[str, bytes]]
    models_url: Callable[[str], str]


_ADAPTERS = {
    "openai_like": _Adapter(openai.upstream_url, openai.probe_target, openai.models_url),
    "gemini": _Adapter(gemini.upstream_url, gemini.probe_target, gemini.models_url),
    "anthropic": _Adapter(anthropic.upstream_url, anthropic.probe_target, anthropic.models_url),
}

_ERROR_BODIES = {
    "openai": openai.error_body,
    "gemini": gemini.error_body,
    "anthropic": anthropic.error_body,
}
_NATIVE: dict[str, Api] = {"gemini": "gemini", "anthropic": "anthropic"}


def upstream_url(provider: ProviderSettings, api: Api, path: str, query: str) -> str:
    """The upstream URL for a validated client path and query string (see
    `providers.target`: the query no longer holds a `key=`; the real key travels in a header).
    Raises ValueError for a path the provider cannot serve in that format.
    """
    url = _ADAPTERS[provider.provider_type].upstream_url(provider.api_base_url, api, path)
    return f"{url}?{query}" if query else url


def auth_header(provider: ProviderSettings, api: Api, secret: str) -> tuple[str, str]:
    """The header that carries the real key: `x-goog-api-key` for native Gemini, `x-api-key`
    for native Anthropic, else Bearer."""
    if provider.provider_type == "gemini" and api == "gemini":
        return "x-goog-api-key", secret
    if provider.provider_type == "anthropic" and api == "anthropic":
        return "x-api-key", secret
    return "authorization", f"Bearer {secret}"


def upstream_headers(
    provider: ProviderSettings, api: Api, forwarded: Mapping[str, str], secret: str
) -> dict[str, str]:
    """The headers of one attempt: the client's forwarded ones and the real key (native
    Anthropic: `anthropic-version` defaulted when the client sent none)."""
    headers = dict(forwarded)
    name, value = auth_header(provider, api, secret)
    headers[name] = value
    if api == "anthropic" and "anthropic-version" not in headers:
        headers["anthropic-version"] = anthropic.DEFAULT_VERSION
    return headers


def probe_request(provider: ProviderSettings, model_name: str, secret: str) -> ProbeRequest:
    """The generation probe for one configured model entry (`ALL_MODELS`: the provider's
    `default_model`). A pattern entry is probed through `default_model`, the concrete model
    it serves, with the entry's own `endpoint_suffix` and `test_payload`."""
    model, settings = _model(provider, model_name)
    url, body = _ADAPTERS[provider.provider_type].probe_target(
        provider.api_base_url, model, settings
    )
    api = _NATIVE.get(provider.provider_type, "openai")
    headers = _probe_headers(provider, api, secret)
    headers["content-type"] = "application/json"
    return ProbeRequest(method="POST", url=url, headers=headers, body=body)


def auth_probe_request(provider: ProviderSettings, secret: str) -> ProbeRequest:
    """The cheap auth probe: the models list, which spends no tokens."""
    url = _ADAPTERS[provider.provider_type].models_url(provider.api_base_url)
    api = _NATIVE.get(provider.provider_type, "openai")
    headers = _probe_headers(provider, api, secret)
    return ProbeRequest(method="GET", url=url, headers=headers, body=b"")


def _probe_headers(provider: ProviderSettings, api: Api, secret: str) -> dict[str, str]:
    name, value = auth_header(provider, api, secret)
    if api == "anthropic":
        return {name: value, "anthropic-version": anthropic.DEFAULT_VERSION}
    return {name: value}


def _model(provider: ProviderSettings, model_name: str) -> tuple[str, ModelSettings]:
    """The concrete model a probe names and the settings of the entry it probes."""
    if model_name == ALL_MODELS:
        return _default_model(provider)
    settings = provider.models.get(model_name)
    if settings is None:
        known = ", ".join(sorted(provider.models)) or "none"
        raise ValueError(
            f"model {model_name!r} is not configured for this provider "
            f"(configured: {known}); add it under `models`"
        )
    if is_pattern(model_name):  # a pattern is no model: probe the one the config says it serves
        return provider.default_model, settings
    return model_name, settings


def _default_model(provider: ProviderSettings) -> tuple[str, ModelSettings]:
    """`default_model` with the settings of the entry serving it. The config rules make sure
    one does; without them, the first concrete entry stands in."""
    entry = Catalog.of(provider.models).resolve(provider.default_model)
    if entry is not None:
        return provider.default_model, provider.models[entry]
    concrete = [name for name in provider.models if not is_pattern(name)]
    if concrete:
        return concrete[0], provider.models[concrete[0]]
    return provider.default_model, next(iter(provider.models.values()))


def error_body(
    api: Api, status: int, message: str, *, code: str | None = None, type_: str | None = None
) -> bytes:
    """An error body in the client's wire format (OpenAI, Gemini or Anthropic shape)."""
    return _ERROR_BODIES[api](status, message, code=code, type_=type_)


def sse_error_event(api: Api, status: int, message: str) -> bytes:
    """An in-band error for a stream already started: `data: {"error": …}\\n\\n` (Anthropic's
    as an `event: error`)."""
    if api == "anthropic":
        return anthropic.sse_error_event(status, message)
    return b"data: " + error_body(api, status, message) + b"\n\n"
