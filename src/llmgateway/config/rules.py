"""What the field types cannot say: the cross-field rules of the configuration.

The rules run on every part of the config that validates on its own, so one typo elsewhere
does not hide them: all problems are reported in one go. The rules of routes and gateway-wide
tokens are in `config.route_rules`. Warnings that are not rules: weak tokens
(`config.weak_tokens`) and models no route reaches (`config.reachable`).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, Union, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

from llmgateway.config.route_rules import RouteParts, route_findings, routed_providers
from llmgateway.config.schema import choose_member, is_model, step, unwrap
from llmgateway.config.settings import (
    AdminSettings,
    AnthropicProvider,
    BreakerBackoff,
    DatabaseSettings,
    GeminiProvider,
    HealthPolicy,
    LimitsBackend,
    OpenAILikeProvider,
    Pooler,
    ProviderSettings,
    ProxyConfig,
    ProxyMode,
    Settings,
)
from llmgateway.observe.masking import mask
from llmgateway.providers.catalog import Catalog, is_pattern

Finding = tuple[str, str, str]
"""One broken rule: (dotted path, what is wrong, hint)."""

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
    parts = RouteParts.of(settings) if settings is not None else RouteParts.partial(data)
    findings.extend(_unreachable_providers(providers, routed_providers(parts)))
    findings.extend(route_findings(parts))
    return findings


# -- the rules -----------------------------------------------------------------------------------


def _provider_rules(p: ProviderSettings) -> Iterator[Finding]:
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


def _default_model_rules(p: ProviderSettings) -> Iterator[Finding]:
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
            "e.g. http://user:pass@10.0.0.1:3128 or socks5h://user:pass@10.0.0.1:1080",
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


def _database_rules(database: DatabaseSettings) -> Iterator[Finding]:
    sqlite = database.backend == "sqlite"
    direct = database.direct_url
    if direct is not None and not direct.startswith(("postgresql", "postgres:")):
        yield (
            "direct_url",
            "must be a postgresql:// URL (PostgreSQL itself, for notices, locks and migrations)",
            "e.g. direct_url: postgresql://user:pass@db-host:5432/llmgateway",
        )
    elif direct is not None and sqlite:
        yield (
            "direct_url",
            "only applies when database.url is PostgreSQL, but database.url is SQLite",
            "remove direct_url, or point database.url at PostgreSQL (or its pooler)",
        )
    if database.pooler not in (Pooler.AUTO, Pooler.NONE) and sqlite:
        yield (
            "pooler",
            f"{database.pooler.value} describes a PostgreSQL pooler, but database.url is SQLite",
            "remove pooler, or point database.url at the pooler",
        )


def _admin_rules(settings: Settings) -> Iterator[Finding]:
    admin: AdminSettings = settings.admin
    if admin.token and not admin.token.strip():
        yield ("admin.token", "a blank token", "set a long random token, or remove it")
    if admin.port is None and admin.host is not None:
        yield (
            "admin.host",
            "only applies with admin.port (the console's own listener)",
            "set admin.port, or remove admin.host: the console is then served on "
            "worker.metrics_host",
        )
    if admin.enabled and admin.port is None and settings.worker.metrics_port == 0:
        yield (
            "admin.port",
            "the console is served on the Keeper's metrics listener, but worker.metrics_port "
            "is 0 (off)",
            "set admin.port to give the console a listener of its own (e.g. 9465), or set "
            "worker.metrics_port",
        )


_Rule = Callable[[Any], Iterator[Finding]]
_RULES: tuple[tuple[tuple[type[BaseModel], ...], tuple[str, ...], _Rule], ...] = (
    # (the sections a rule applies to, the settings it reads, the rule)
    (
        (OpenAILikeProvider, GeminiProvider, AnthropicProvider),
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
    ((Settings,), ("admin", "worker"), _admin_rules),
    ((DatabaseSettings,), ("url", "direct_url", "pooler"), _database_rules),
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


def _unreachable_providers(
    providers: Mapping[str, ProviderSettings], routed: frozenset[str] | None
) -> Iterator[Finding]:
    """An enabled provider needs a token of its own, unless gateway-wide tokens reach it
    (`routed`; None when the routes or gateway tokens do not validate: then nothing is said)."""
    for name, provider in providers.items():
        if not provider.enabled or provider.access_control.tokens or routed is None:
            continue
        if name not in routed:
            yield (
                f"providers.{name}.access_control.gateway_access_token",
                "an enabled provider needs a gateway access token",
                "set gateway_access_token (e.g. ${MY_TOKEN}) or gateway_access_tokens, "
                "reach it from a route or a gateway token's providers, or set enabled: false",
            )


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
    tp = choose_member(unwrap(tp), raw)
    if tp is None or not _has_rules_below(tp):
        return
    try:
        value = TypeAdapter(tp).validate_python(raw)
    except ValidationError:
        pass
    else:
        yield from _walk_value(value, path)
        return
    if is_model(tp) and isinstance(raw, dict):
        for where, message, hint in _partial_rules(tp, raw):
            yield (".".join((*path, where)), message, hint)
    if isinstance(raw, dict):
        for key, item in raw.items():
            child = step(tp, key)
            if child is not None:
                yield from _walk_raw(child, item, (*path, str(key)))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            child = step(tp, i)
            if child is not None:
                yield from _walk_raw(child, item, (*path, str(i)))


def _has_rules_below(tp: Any) -> bool:
    return is_model(tp) or get_origin(tp) in (dict, tuple, list, Union, types.UnionType)


def _valid_providers(raw: Any) -> dict[str, ProviderSettings]:
    """The providers whose `enabled` and `access_control` validate (for the token rule)."""
    if not isinstance(raw, dict):
        return {}
    valid = {}
    for name, item in raw.items():
        tp = choose_member(unwrap(ProviderSettings), item)
        partial = _partial(tp, item, ("enabled", "access_control")) if tp else None
        if partial is not None:
            valid[str(name)] = partial
    return valid
