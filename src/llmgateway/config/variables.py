"""`${VAR}` and `${VAR:-default}` in the config's values: the scalars the YAML parser keeps for
substitution (`Template`), and their substitution from the environment.

The default applies also when VAR is empty. Substitution happens before validation, so an
unquoted `port: ${DB_PORT}` becomes a number; `$${` writes a literal `${`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from llmgateway.config.problems import Problem


@dataclass(frozen=True, slots=True)
class Template:
    """A scalar holding `${...}`, substituted after parsing; plain (unquoted) ones are retyped."""

    text: str
    plain: bool
    line: int


_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RETYPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
_RESOLVER = yaml.resolver.Resolver()


def substitute(node: Any, env: Mapping[str, str], path: tuple[str, ...], out: list[Problem]) -> Any:
    """`node` with every `Template` in it substituted from `env`; problems go to `out`,
    each at its dotted `path`."""
    if isinstance(node, Template):
        return _expand(node, env, ".".join(path), out)
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            key = substitute(key, env, path, out)
            result[key] = substitute(value, env, (*path, str(key)), out)
        return result
    if isinstance(node, list):
        return [substitute(v, env, (*path, str(i)), out) for i, v in enumerate(node)]
    return node


def _expand(template: Template, env: Mapping[str, str], path: str, out: list[Problem]) -> Any:
    pieces: list[str] = []
    position = 0
    for match in _REFERENCE.finditer(template.text):
        pieces.append(template.text[position : match.start()])
        position = match.end()
        if match.group() == "$${":
            pieces.append("${")
            continue
        name, has_default, default = match["body"].partition(":-")
        value = env.get(name)
        if has_default and not value:
            value = default
        if not match["close"] or not _NAME.fullmatch(name):
            out.append(_malformed(path or f"line {template.line}", match.group()))
        elif value is None:
            out.append(_unset(path or f"line {template.line}", name))
        else:
            pieces.append(value)
            continue
        pieces.append(match.group())
    text = "".join(pieces) + template.text[position:]
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if template.plain and tag in _RETYPED:
        return yaml.safe_load(text)
    return text


def _unset(path: str, name: str) -> Problem:
    hint = f"export {name}=..., set it in .env, or give a default: ${{{name}:-value}}"
    return Problem(path, f"environment variable {name} is not set", hint)


def _malformed(path: str, reference: str) -> Problem:
    hint = "write ${NAME} or ${NAME:-default}; write $${ for a literal ${"
    return Problem(path, f"malformed variable reference '{reference}'", hint)
