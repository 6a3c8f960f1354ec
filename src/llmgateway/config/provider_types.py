"""A provider whose `provider_type` is missing or unknown, validated all the same.

The settings model picks a provider's fields by its `provider_type` (a tagged union): without a
valid tag pydantic stops at the tag and says nothing about the rest of that provider. So before
validation such a provider is given a stand-in type, the one it most likely means (the closest
name to what was written, else `openai_like`), and the missing or unknown type becomes one
problem of its own: every other problem of the provider, and of the others, is found in the
same run.
"""

from __future__ import annotations

import difflib
from typing import Any

from llmgateway.config.problems import Problem
from llmgateway.config.settings import OpenAILikeProvider

PROVIDER_TYPES = ("openai_like", "gemini", "anthropic")
"""The valid values of `provider_type`, in the order hints list them."""
TAG = "provider_type"
_CUTOFF = 0.6  # as close as a "did you mean" elsewhere in the config's problems
_ONE_OF = "use one of: " + ", ".join(f"'{name}'" for name in PROVIDER_TYPES)


def with_stand_in_types(data: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """`data` with a stand-in `provider_type` for each provider that has none valid, and a
    problem for each of them (none when a misspelt key, e.g. `provder_type`, already explains
    it: the unknown setting is reported with its closest valid name)."""
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return data, []
    problems: list[Problem] = []
    fixed: dict[Any, Any] = {}
    for name, body in providers.items():
        if not isinstance(body, dict) or body.get(TAG) in PROVIDER_TYPES:
            fixed[name] = body
            continue
        problem, stand_in = _judge(f"providers.{name}.{TAG}", body)
        if problem is not None:
            problems.append(problem)
        fixed[name] = {**body, TAG: stand_in}
    return {**data, "providers": fixed}, problems


def _judge(path: str, body: dict[Any, Any]) -> tuple[Problem | None, str]:
    """(the problem with the provider's type, or None; the type to validate the rest as)."""
    if TAG in body:
        written = body[TAG]
        meant = _closest(written)
        shown = f"'{written}'" if isinstance(written, str) else "a " + type(written).__name__
        hint = f"did you mean '{meant}'?" if meant else _ONE_OF
        return Problem(path, f"unknown provider_type {shown}", hint), meant or PROVIDER_TYPES[0]
    misspelt = [k for k in body if isinstance(k, str) and _is_tag_typo(k)]
    if misspelt:
        return None, _closest(body[misspelt[0]]) or PROVIDER_TYPES[0]
    return Problem(path, "provider_type is missing", _ONE_OF), PROVIDER_TYPES[0]


def _is_tag_typo(key: str) -> bool:
    """Is `key` an unknown setting whose closest valid name is `provider_type`?"""
    fields = list(OpenAILikeProvider.model_fields)
    if key in fields:
        return False
    return difflib.get_close_matches(key, fields, n=1, cutoff=_CUTOFF) == [TAG]


_ALIASES = {"claude": "anthropic"}
"""Names meant for a type that spelling alone does not lead to."""


def _closest(written: Any) -> str | None:
    if not isinstance(written, str):
        return None
    if written.lower() in _ALIASES:
        return _ALIASES[written.lower()]
    close = difflib.get_close_matches(written.lower(), PROVIDER_TYPES, n=1, cutoff=_CUTOFF)
    return close[0] if close else None
