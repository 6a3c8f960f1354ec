"""What the field types cannot say: the cross-field rules of the configuration, and the schema
lookups (valid names, defaults) that turn pydantic's errors into helpful ones.

The rules run on every part of the config that validates on its own, so one typo elsewhere
does not hide them: all problems are reported in one go.

`weak_tokens()` is not a validation rule: a placeholder or short token is fine on loopback, and
the commands that listen decide (see `llmgateway.cli.main`). Nor is `unreachable_models()`: a model
no route can reach is a warning of `check-config`.
"""

from __future__ import annotations

import ipaddress
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

from llmgateway.config.settings import (
    BreakerBackoff,
    GeminiProvider,
    HealthPolicy,
    LimitsBackend,
    OpenAILikeProvider,
    ProviderSettings,
    ProxyConfig,
    ProxyMode,
    Settings,
)
from llmgateway.observe.masking import mask
from llmgateway.providers.catalog import Catalog, is_pattern
from llmgateway.providers.target import checked_path

Finding = tuple[str, str, str]
"""One broken rule: (dotted path, what is wrong, hint)."""
Loc = Sequence[str | int]

_PROVIDER_TYPES = ("openai_like", "gemini")
_M = TypeVar("_M", bound=BaseModel)


def check(data: Mapping[str, Any], settings: Settings | None) -> list[Finding]:
    """Every broken rule in `data`; `settings` is `data` validated, or None when it did not."""
    if settings is not None:
        findings = list(_walk_value(settings, ()))
        providers: Mapping[str, ProviderSettings] = settings.providers
    else:
        findings = list(_walk_raw(Settings, data, ()))
        providers = _valid_providers(data.get("providers"))
    findings.extend(_token_findings(providers))
    return findings


# -- the rules -----------------------------------------------------------------------------------


def _provider_rules(p: OpenAILikeProvider | GeminiProvider) -> Iterator[Finding]:
    yield from _default_model_rules(p)
    if p.provider_type == "gemini":
        for name, model in p.models.items():
            if not model.endpoint_suffix.startswith(":"):
                yield (
                    f"models.{name}.endpoint_suffix",
                    "a Gemini endpoint suffix starts with ':'",
                    "e.g. ':generateContent' or ':predict'",
                )
    for i, token in enumerate(p.access_control.gateway_access_tokens):
        if not token.strip():
            yield (f"access_control.gateway_access_tokens.{i}", "empty token", "remove it")
    if p.enabled and not p.access_control.tokens:
        yield (
            "access_control.gateway_access_token",
            "an enabled provider needs a gateway access token",
            "set gateway_access_token (e.g. ${MY_TOKEN}) or gateway_access_tokens, "
            "or set enabled: false",
        )


def _default_model_rules(p: OpenAILikeProvider | GeminiProvider) -> Iterator[Finding]:
    """`default_model` names one concrete model the provider serves; it is also the model a
    pattern entry is probed through, so each pattern must match it (unless one shared status
    is probed for all models)."""
    default, catalog = p.default_model, Catalog.of(p.models)
    if is_pattern(default):
        yield (
            "default_model",
            f"'{default}' is a pattern, not a model",
            "default_model is the model probes (and requests naming none) use: "
            "give one concrete name, without * ? [",
        )
        return
    if p.models and catalog.resolve(default) is None:
        names = ", ".join(name for name in p.models if not is_pattern(name))
        ways = [f"use one of: {names}"] if names else []
        message = f"'{default}' is not one of the provider's models"
        if catalog.patterns:
            message = f"'{default}' is neither one of the provider's models nor matched by one"
            message += " of its patterns"
            patterns = ", ".join(f"'{name}'" for name, _ in catalog.patterns)
            ways.append(f"a name {patterns} matches")
        yield ("default_model", message, ", or ".join(ways))
    if p.shared_key_status:
        return  # the one shared status is probed with default_model
    for name, pattern in catalog.patterns:
        if pattern.match(default) is None:
            yield (
                f"models.{name}",
                f"a pattern is probed through default_model, and '{default}' does not match it",
                "set shared_key_status: true, or a default_model the pattern matches",
            )


def _health_rules(policy: HealthPolicy) -> Iterator[Finding]:
    if policy.quarantine_after_days > policy.stop_checking_after_days:
        yield (
            "quarantine_after_days",
            f"must not exceed stop_checking_after_days ({policy.stop_checking_after_days})",
            "a failing key is quarantined before checking stops",
        )


def _proxy_rules(proxy: ProxyConfig) -> Iterator[Finding]:
    if proxy.mode is ProxyMode.STATIC and not proxy.static_url:
        yield (
            "static_url",
            "required when mode is static",
            "e.g. http://user:pass@10.0.0.1:3128 or socks5://10.0.0.1:1080",
        )
    if proxy.mode is ProxyMode.STEALTH and proxy.pool_list_path is None:
        yield (
            "pool_list_path",
            "required when mode is stealth",
            "a folder of proxy URL files, e.g. proxies/gemini",
        )


def _backoff_rules(backoff: BreakerBackoff) -> Iterator[Finding]:
    if backoff.max_duration_sec < backoff.base_duration_sec:
        yield (
            "max_duration_sec",
            f"must be at least base_duration_sec ({backoff.base_duration_sec:g})",
            "the open time grows from base_duration_sec up to max_duration_sec",
        )


def _limits_rules(settings: Settings) -> Iterator[Finding]:
    backend = settings.limits.backend
    if backend is LimitsBackend.REDIS and not settings.limits.redis_url:
        yield (
            "limits.redis_url",
            "required when limits.backend is redis",
            "e.g. redis_url: redis://127.0.0.1:6379/0, or backend: auto",
        )
    if backend is LimitsBackend.POSTGRES and settings.database.backend != "postgresql":
        yield (
            "limits.backend",
            "postgres counts per-key limits in the store, but database.url is SQLite",
            "use a postgresql:// database.url, or backend: redis (with redis_url) or local",
        )


_Rule = Callable[[Any], Iterator[Finding]]
_RULES: tuple[tuple[tuple[type[BaseModel], ...], tuple[str, ...], _Rule], ...] = (
    # (the sections a rule applies to, the settings it reads, the rule)
    (
        (OpenAILikeProvider, GeminiProvider),
        (
            "provider_type",
            "enabled",
            "default_model",
            "shared_key_status",
            "models",
            "access_control",
        ),
        _provider_rules,
    ),
    ((HealthPolicy,), ("quarantine_after_days", "stop_checking_after_days"), _health_rules),
    ((ProxyConfig,), ("mode", "static_url", "pool_list_path"), _proxy_rules),
    ((BreakerBackoff,), ("base_duration_sec", "max_duration_sec"), _backoff_rules),
    ((Settings,), ("limits", "database"), _limits_rules),
)


def _rules(value: BaseModel) -> Iterator[Finding]:
    for sections, _, rule in _RULES:
        if isinstance(value, sections):
            yield from rule(value)


def _partial_rules(tp: type[BaseModel], raw: dict[Any, Any]) -> Iterator[Finding]:
    """The rules of a section that did not validate, run when the settings they read did."""
    for sections, needed, rule in _RULES:
        if issubclass(tp, sections):
            partial = _partial(tp, raw, needed)
            if partial is not None:
                yield from rule(partial)


def _partial(tp: type[_M], raw: dict[Any, Any], needed: Sequence[str]) -> _M | None:
    """`tp` with only the `needed` settings, each validated on its own (None if one fails)."""
    values = {}
    for name in needed:
        field = tp.model_fields[name]
        value = raw[name] if name in raw else field.get_default(call_default_factory=True)
        if value is PydanticUndefined:
            return None
        annotation: Any = field.annotation
        try:
            values[name] = TypeAdapter(annotation).validate_python(value)
        except ValidationError:
            return None
    return tp.model_construct(**values)


def _token_findings(providers: Mapping[str, ProviderSettings]) -> Iterator[Finding]:
    """A gateway token picks one provider, so it must be unique across enabled providers."""
    owner: dict[str, str] = {}
    for name, provider in providers.items():
        if not provider.enabled:
            continue
        access = provider.access_control
        places = [("gateway_access_token", access.gateway_access_token)]
        places += [
            (f"gateway_access_tokens.{i}", t) for i, t in enumerate(access.gateway_access_tokens)
        ]
        for field, token in places:
            first = owner.setdefault(token, name) if token else name
            if first != name:
                yield (
                    f"providers.{name}.access_control.{field}",
                    f"token {mask(token)} is already used by provider '{first}'",
                    "each token selects one provider; give every enabled provider its own",
                )


# -- weak tokens ---------------------------------------------------------------------------------

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
    tokens of each enabled provider, then the metrics token. An empty metrics token is not weak
    (it turns /metrics off), nor is an empty `gateway_access_token` beside a list of tokens."""
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
    if settings.metrics.access_token:
        found.append(("metrics.access_token", settings.metrics.access_token))
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


# -- models no route reaches --------------------------------------------------------------------

_GEMINI_SEGMENT = re.compile(r"[^/:]+")
"""A model in a Gemini native path (`/v1beta/models/{model}:method`): one segment, no `:`."""
_STAND_IN = "model"
"""A concrete segment in place of a pattern, to check the path a pattern's requests take."""


def unreachable_models(settings: Settings) -> list[tuple[str, str]]:
    """Every model of an enabled provider that no request can reach, as (dotted path, why):
    warnings, not errors (the model is configured, only never served). An `openai_like`
    model's `endpoint_suffix` must be a path the gateway forwards under `/v1`; a Gemini model
    must be one path segment, and its path with the suffix one the gateway forwards."""
    found: list[tuple[str, str]] = []
    for name, provider in settings.providers.items():
        if not provider.enabled:
            continue
        for model, model_settings in provider.models.items():
            where = f"providers.{name}.models.{model}"
            suffix = model_settings.endpoint_suffix
            if provider.provider_type == "gemini":
                found.extend(_gemini_reach(where, model, suffix))
            elif not suffix.startswith("/") or checked_path(("/v1" + suffix).encode()) is None:
                found.append(
                    (
                        f"{where}.endpoint_suffix",
                        f"{suffix!r} is not a path the gateway forwards (a '/…' path of "
                        "RFC 3986 characters, without dot-segments): no route reaches it",
                    )
                )
    return found


def _gemini_reach(where: str, model: str, suffix: str) -> Iterator[tuple[str, str]]:
    segment = _STAND_IN if is_pattern(model) else model.removeprefix("models/")
    native = f"/v1beta/models/{segment}"
    if _GEMINI_SEGMENT.fullmatch(segment) is None or checked_path(native.encode()) is None:
        yield (
            where,
            "a Gemini model is one path segment of RFC 3986 characters (no '/' or ':' after "
            "a leading 'models/'): no native route reaches it",
        )
    elif checked_path((native + suffix).encode()) is None:
        yield (
            f"{where}.endpoint_suffix",
            f"{suffix!r} makes a path the gateway does not forward (RFC 3986 characters only, "
            "no dot-segments): no route reaches this model",
        )


# -- walking validated and raw data --------------------------------------------------------------


def _walk_value(value: Any, path: tuple[str, ...]) -> Iterator[Finding]:
    if isinstance(value, BaseModel):
        for where, message, hint in _rules(value):
            yield (".".join((*path, where)), message, hint)
        for name in type(value).model_fields:
            yield from _walk_value(getattr(value, name), (*path, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_value(item, (*path, str(key)))
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _walk_value(item, (*path, str(i)))


def _walk_raw(tp: Any, raw: Any, path: tuple[str, ...]) -> Iterator[Finding]:
    """Validate `raw` as `tp` and check the rules; where it does not validate, go down a level."""
    tp = _choose_member(_unwrap(tp), raw)
    if tp is None or not _has_rules_below(tp):
        return
    try:
        value = TypeAdapter(tp).validate_python(raw)
    except ValidationError:
        pass
    else:
        yield from _walk_value(value, path)
        return
    if _is_model(tp) and isinstance(raw, dict):
        for where, message, hint in _partial_rules(tp, raw):
            yield (".".join((*path, where)), message, hint)
    if isinstance(raw, dict):
        for key, item in raw.items():
            child = _step(tp, key)
            if child is not None:
                yield from _walk_raw(child, item, (*path, str(key)))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            child = _step(tp, i)
            if child is not None:
                yield from _walk_raw(child, item, (*path, str(i)))


def _has_rules_below(tp: Any) -> bool:
    return _is_model(tp) or get_origin(tp) in (dict, tuple, list, Union, types.UnionType)


def _valid_providers(raw: Any) -> dict[str, ProviderSettings]:
    """The providers whose `enabled` and `access_control` validate (for the token rule)."""
    if not isinstance(raw, dict):
        return {}
    valid = {}
    for name, item in raw.items():
        tp = _choose_member(_unwrap(ProviderSettings), item)
        partial = _partial(tp, item, ("enabled", "access_control")) if tp else None
        if partial is not None:
            valid[str(name)] = partial
    return valid


# -- schema lookups ------------------------------------------------------------------------------


def clean_loc(loc: Loc) -> tuple[str | int, ...]:
    """A pydantic error location as the user wrote it: without the provider_type tag pydantic
    inserts for the provider union, nor its `[key]` marker for a bad mapping key."""
    parts = tuple(loc)
    if len(parts) > 2 and parts[0] == "providers" and parts[2] in _PROVIDER_TYPES:
        parts = parts[:2] + parts[3:]
    return parts[:-1] if parts and parts[-1] == "[key]" else parts


def fields_at(loc: Loc) -> list[str]:
    """The setting names valid at a pydantic location (empty when it is not a section)."""
    tp = _navigate(loc)
    return list(tp.model_fields) if _is_model(tp) else []


def default_hint(loc: Loc) -> str:
    """`default: X` for the setting at a pydantic location, when it has a simple default."""
    if not loc:
        return ""
    parent = _navigate(loc[:-1])
    field = parent.model_fields.get(loc[-1]) if _is_model(parent) else None
    default = PydanticUndefined if field is None else field.default
    if isinstance(default, bool):
        return f"default: {str(default).lower()}"
    if isinstance(default, str | int | float) and default != "":
        return f"default: {default}"
    return ""


def _navigate(loc: Loc) -> Any:
    tp: Any = Settings
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return None
    return _unwrap(tp)


def _step(tp: Any, part: str | int) -> Any:
    """The type one level down from `tp`, at mapping key / list index / field name `part`."""
    tp = _unwrap(tp)
    if _is_model(tp):
        field = tp.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin = get_origin(tp)
    if origin is dict:
        return get_args(tp)[1]
    if origin in (tuple, list):
        return get_args(tp)[0]
    if origin in (Union, types.UnionType):  # a provider_type tag in a pydantic location
        return next((m for m in get_args(tp) if _tag(m) == part), None)
    return None


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp


def _choose_member(tp: Any, raw: Any) -> Any:
    """For the provider union, the member named by the raw data's provider_type."""
    if get_origin(tp) not in (Union, types.UnionType):
        return tp
    tag = raw.get("provider_type") if isinstance(raw, dict) else None
    return next((m for m in get_args(tp) if _tag(m) == tag), None)


def _tag(member: Any) -> Any:
    field = member.model_fields.get("provider_type") if _is_model(member) else None
    return get_args(field.annotation)[0] if field is not None else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
