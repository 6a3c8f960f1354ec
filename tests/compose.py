"""docker-compose.yml as Compose would resolve it, without a container engine: its
`${VAR}` interpolations (`:-` `-` `:?` `?` `:+` `+`, nested, `$$`) resolved against a `.env`
the way Compose does it (defaults and messages are resolved first, even when not used, as
compose-go does), and each service's container environment (`env_file`, then `environment`).

The `.env` is read with llmgateway's own reader (python-dotenv's format); for the lines our
examples and the original's `.env` hold (comments, `NAME=value`, inline `# comments` after a
space) Compose reads the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from llmgateway.config.env_file import parse_env_file

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class ComposeError(Exception):
    """Compose would refuse the file (a required variable has no value)."""


def read_env(path: Path) -> dict[str, str]:
    """The variables of a `.env` file."""
    return parse_env_file(path.read_text(), str(path), {})


def interpolate(text: str, env: Mapping[str, str], unset: set[str]) -> str:
    """`text` with every `$…` resolved from `env`; names used without a default while unset go
    to `unset` (Compose warns and uses an empty value)."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing(text, i)
            out.append(_braced(text[i + 2 : end], env, unset))
            i = end + 1
        elif named := _NAME.match(text, i + 1):
            out.append(_plain(named.group(), env, unset))
            i = named.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ComposeError(f"unclosed ${{ in {text!r}")


def _braced(body: str, env: Mapping[str, str], unset: set[str]) -> str:
    name = _NAME.match(body)
    if name is None:
        raise ComposeError(f"invalid interpolation ${{{body}}}")
    rest = body[name.end() :]
    if not rest:
        return _plain(name.group(), env, unset)
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise ComposeError(f"invalid interpolation ${{{body}}}")
    argument = interpolate(rest[len(operator) :], env, unset)  # eagerly, as compose-go
    value = env.get(name.group())
    empty_counts = operator.startswith(":")
    present = value is not None and (value != "" or not empty_counts)
    if operator in (":-", "-"):
        return value if present and value is not None else argument
    if operator in (":?", "?"):
        if not present or value is None:
            raise ComposeError(f"required variable {name.group()} is missing a value: {argument}")
        return value
    return argument if present else ""


def _plain(name: str, env: Mapping[str, str], unset: set[str]) -> str:
    if name not in env:
        unset.add(name)
    return env.get(name, "")


def resolve(data: Any, env: Mapping[str, str], unset: set[str]) -> Any:
    """Every string of a loaded Compose file interpolated (keys stay as written)."""
    if isinstance(data, str):
        return interpolate(data, env, unset)
    if isinstance(data, dict):
        return {key: resolve(value, env, unset) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve(value, env, unset) for value in data]
    return data


def resolved_compose(
    env: Mapping[str, str], unset: set[str] | None = None, path: Path = COMPOSE
) -> dict[str, Any]:
    """A compose file (default docker-compose.yml) resolved against `env` (the variables of
    the project's `.env`)."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    result: dict[str, Any] = resolve(data, env, set() if unset is None else unset)
    return result


def merged(base: Any, override: Any) -> Any:
    """`override` laid over `base` as `docker compose -f base -f override` does for mappings
    and single values (what our override files hold): a mapping merges key by key, anything
    else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            result[key] = merged(base[key], value) if key in base else value
        return result
    return override


def container_env(service: dict[str, Any], dotenv: Mapping[str, str]) -> dict[str, str]:
    """The environment of a resolved service's container: its `env_file` (here: the project's
    `.env`), then its `environment`, which wins."""
    env: dict[str, str] = {}
    if service.get("env_file") in (".env", [".env"]):
        env.update(dotenv)
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "environment is written as a mapping"
    env.update({name: str(value) for name, value in environment.items()})
    return env
