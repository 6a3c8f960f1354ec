"""Schema lookups on the settings model: the valid names, the defaults and the settings no longer
supported at a pydantic error's location, and the types one level down, that turn pydantic's
errors into helpful ones and let the cross-field rules walk data that did not validate."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmgateway.config.settings import GatewayPolicy, Settings

Loc = Sequence[str | int]
"""A pydantic error location."""

_PROVIDER_TYPES = ("openai_like", "gemini", "anthropic")

RETIRED: Mapping[tuple[type[BaseModel], str], tuple[str, str]] = {
    (GatewayPolicy, "max_inflight_per_key"): (
        "use gateway_policy.key_limits.max_concurrent",
        "it counts per key, or per key × model unless shared_key_status; with limits.backend: "
        "local it counts in each gateway process, as max_inflight_per_key did",
    ),
    (GatewayPolicy, "unsafe_status_mapping"): (
        "use gateway_policy.fast_status_mapping",
        "the original renamed it; the same {status: reason} mapping",
    ),
}
"""Settings once accepted and now refused, by section and name: (what to do instead, a hint).
What to do starts with `use …`, or is `remove it` when nothing replaces the setting."""


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
    return list(tp.model_fields) if is_model(tp) else []


def default_hint(loc: Loc) -> str:
    """`default: X` for the setting at a pydantic location, when it has a simple default."""
    if not loc:
        return ""
    parent = _navigate(loc[:-1])
    field = parent.model_fields.get(loc[-1]) if is_model(parent) else None
    default = PydanticUndefined if field is None else field.default
    if isinstance(default, bool):
        return f"default: {str(default).lower()}"
    if isinstance(default, str | int | float) and default != "":
        return f"default: {default}"
    return ""


def retired(loc: Loc) -> tuple[str, str] | None:
    """(what to do instead, a hint) when the setting at a pydantic location is one no longer
    supported (`RETIRED`), else None."""
    if not loc:
        return None
    parent = _navigate(loc[:-1])
    return RETIRED.get((parent, str(loc[-1]))) if is_model(parent) else None


def _navigate(loc: Loc) -> Any:
    tp: Any = Settings
    for part in loc:
        tp = step(tp, part)
        if tp is None:
            return None
    return unwrap(tp)


def step(tp: Any, part: str | int) -> Any:
    """The type one level down from `tp`, at mapping key / list index / field name `part`."""
    tp = unwrap(tp)
    if is_model(tp):
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


def unwrap(tp: Any) -> Any:
    """`tp` without `Annotated` and without `None` in an optional."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        if len(members) == 1:
            return unwrap(members[0])
    return tp


def choose_member(tp: Any, raw: Any) -> Any:
    """For the provider union, the member named by the raw data's provider_type."""
    if get_origin(tp) not in (Union, types.UnionType):
        return tp
    tag = raw.get("provider_type") if isinstance(raw, dict) else None
    return next((m for m in get_args(tp) if _tag(m) == tag), None)


def _tag(member: Any) -> Any:
    field = member.model_fields.get("provider_type") if is_model(member) else None
    return get_args(field.annotation)[0] if field is not None else None


def is_model(tp: Any) -> bool:
    """Whether `tp` is a settings section (a pydantic model class)."""
    return isinstance(tp, type) and issubclass(tp, BaseModel)
