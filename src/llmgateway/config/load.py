"""Loading the configuration file: read (bounded), parsed as YAML (`config.parse`), `${VAR}`
substituted (`config.variables`), validated by the settings model and the cross-field rules
(`config.rules`), and every problem found reported at once, each with the dotted path of the
setting, what is wrong and a hint (`config.problems`), secrets masked.

A mapping, list or section given no value (`fast_status_mapping:` with only comments under it)
is empty, as the original project's loader took it (`nulls_as_empty`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from llmgateway.config import rules as config_rules
from llmgateway.config.parse import parse
from llmgateway.config.problems import (
    ConfigError,
    Problem,
    from_pydantic,
    kind_of,
    meant_instead,
    read_small_text,
    scrub,
    secrets_in,
)
from llmgateway.config.provider_types import with_stand_in_types
from llmgateway.config.schema import choose_member, is_model, step
from llmgateway.config.settings import Settings
from llmgateway.config.variables import substitute

MAX_CONFIG_BYTES = 1024 * 1024
"""A config file larger than this is refused unread (a real one is a few kilobytes)."""
CONFIG_ENV = "LLMGATEWAY_CONFIG"
"""The environment variable naming the config file when `--config` is not given."""
DEFAULT_CONFIG_PATH = Path("config/providers.yaml")
"""The config file used when neither `--config` nor `$LLMGATEWAY_CONFIG` is given."""


def config_path(option: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: `option` (`--config`), else `$LLMGATEWAY_CONFIG`, else
    `config/providers.yaml`."""
    if option:
        return Path(option)
    env = os.environ if environ is None else environ
    return Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else DEFAULT_CONFIG_PATH


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, substitute and validate the config file at `path`.

    Raises `ConfigError` with every problem found (never just the first).
    """
    env = os.environ if environ is None else environ
    tree, problems = parse(_read(path), str(path))
    data = substitute(tree, env, (), problems)
    if not isinstance(data, dict):
        problems.append(_not_a_mapping(str(path), data))
        raise ConfigError(tuple(problems))
    settings, found = validate(data)
    # a setting whose variable is unset is reported once, as the unset variable
    unset = {p.path for p in problems}
    problems.extend(p for p in found if not _under(p.path, unset))
    if settings is None or problems:
        raise ConfigError(tuple(problems))
    return settings


def validate(data: dict[str, Any]) -> tuple[Settings | None, tuple[Problem, ...]]:
    """Validate parsed, substituted config data: the settings, or every problem found."""
    settings: Settings | None = None
    data, problems = with_stand_in_types(data)
    data = nulls_as_empty(Settings, data)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        meant = {m for m in map(meant_instead, errors) if m is not None}
        found = [from_pydantic(e) for e in errors if not _explained(e, meant)]
        problems = _merged(problems, found)
    problems.extend(Problem(*finding) for finding in config_rules.check(data, settings))
    secrets = sorted(set(secrets_in(data)), key=len, reverse=True)
    return (None if problems else settings), tuple(scrub(p, secrets) for p in problems)


def nulls_as_empty(tp: Any, raw: Any) -> Any:
    """`raw` (data for the setting type `tp`) with every empty value given to a mapping, a list
    or a section made empty: `{}`, `[]`, so its defaults apply. The original project deep-merged
    the file over its defaults and took `key:` with nothing (or only comments) under it as
    empty; a setting that may be null, a scalar, and a provider (whose type is not known
    without its provider_type) keep the empty value and are judged as before."""
    if raw is None:
        return _empty(tp)
    if isinstance(raw, dict):
        parent = choose_member(_bare(tp), raw)
        return {k: _below(parent, k, v) for k, v in raw.items()}
    if isinstance(raw, list):
        parent = _bare(tp)
        return [_below(parent, i, v) for i, v in enumerate(raw)]
    return raw


def _below(parent: Any, key: Any, raw: Any) -> Any:
    child = step(parent, key) if parent is not None and isinstance(key, str | int) else None
    return raw if child is None else nulls_as_empty(child, raw)


def _empty(tp: Any) -> Any:
    tp = _bare(tp)
    if is_model(tp) or get_origin(tp) is dict:
        return {}
    return [] if get_origin(tp) in (list, tuple) else None


def _bare(tp: Any) -> Any:
    """`tp` without `Annotated`; a union (an optional setting, a provider) stays a union."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
        return None  # the setting may be null: an empty value means null
    return tp


def _merged(first: list[Problem], others: list[Problem]) -> list[Problem]:
    """`others` with each of `first` put before the first of them in the same provider (a
    provider's type before its other problems), or after them all."""
    merged = list(others)
    for problem in first:
        provider = problem.path.rpartition(".")[0] + "."
        at = next((i for i, p in enumerate(merged) if p.path.startswith(provider)), len(merged))
        merged.insert(at, problem)
    return merged


def _explained(error: ErrorDetails, meant: set[tuple[str | int, ...]]) -> bool:
    """Is `error` a required setting missing where a misspelt one (reported as an unknown
    setting, with this name as its closest) was given instead?"""
    return error["type"] == "missing" and tuple(error["loc"]) in meant


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _not_a_mapping(name: str, data: Any) -> Problem:
    if data is None:
        return Problem(name, "the file is empty", "start from examples/minimal_config.yaml")
    return Problem(
        name,
        f"the top level must be a mapping of sections, not {kind_of(data)}",
        "write sections like 'providers:' and 'database:' at the start of lines",
    )


# -- reading the file ----------------------------------------------------------------------------


def _read(path: Path) -> str:
    return read_small_text(
        path,
        "config file",
        MAX_CONFIG_BYTES,
        f"pass the path, set ${CONFIG_ENV}, or copy examples/minimal_config.yaml there",
        "a config file is a few kilobytes; check that the path names the config file",
    )
