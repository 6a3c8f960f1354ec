"""Loading the configuration file: YAML, `${VAR}` substitution, validation, and every problem
found reported at once, each with the dotted path of the setting, what is wrong and a hint.

`${VAR}` and `${VAR:-default}` (the default also when VAR is empty) are replaced in the YAML
values before validation, so an unquoted `port: ${DB_PORT}` becomes a number; `$${` writes a
literal `${`. Secrets are never echoed: values under token/password/secret/key/url settings are
not shown, and any that still appear in a message are masked with `observe.masking.mask()`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from llmgateway.config import rules as config_rules
from llmgateway.config import schema
from llmgateway.config.settings import Settings
from llmgateway.observe.masking import mask

MAX_CONFIG_BYTES = 1024 * 1024
"""A config file larger than this is refused unread (a real one is a few kilobytes)."""
MAX_ALIAS_NODES = 10_000
"""YAML aliases may add at most this many values beyond the document's own nodes (a
"billion laughs" file would otherwise expand to gigabytes while it is being constructed)."""
CONFIG_ENV = "LLMGATEWAY_CONFIG"
"""The environment variable naming the config file when `--config` is not given."""
DEFAULT_CONFIG_PATH = Path("config/providers.yaml")
"""The config file used when neither `--config` nor `$LLMGATEWAY_CONFIG` is given."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration: `dotted.path: what is wrong (hint)`."""

    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists everything found, in file order."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


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
    tree, problems = _parse(_read(path), str(path))
    data = _substitute(tree, env, (), problems)
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
    problems: list[Problem] = []
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_from_pydantic(e) for e in exc.errors())
    problems.extend(Problem(*finding) for finding in config_rules.check(data, settings))
    secrets = sorted(set(_secrets(data)), key=len, reverse=True)
    return (None if problems else settings), tuple(_scrub(p, secrets) for p in problems)


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _not_a_mapping(name: str, data: Any) -> Problem:
    if data is None:
        return Problem(name, "the file is empty", "start from examples/minimal_config.yaml")
    return Problem(
        name,
        f"the top level must be a mapping of sections, not {_kind(data)}",
        "write sections like 'providers:' and 'database:' at the start of lines",
    )


# -- reading and YAML ----------------------------------------------------------------------------


def _read(path: Path) -> str:
    hint = f"pass the path, set ${CONFIG_ENV}, or copy examples/minimal_config.yaml there"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file is
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError((_too_large(path),))
        return data.decode("utf-8-sig")
    except FileNotFoundError:
        problem = Problem(str(path), "config file not found", hint)
    except IsADirectoryError:
        problem = Problem(str(path), "is a folder, not a config file", hint)
    except PermissionError:
        problem = Problem(str(path), "cannot read the config file: permission denied", "")
    except UnicodeDecodeError as exc:
        problem = Problem(str(path), f"not UTF-8 text (byte {exc.start})", "save it as UTF-8")
    except OSError as exc:
        problem = Problem(str(path), f"cannot read the config file: {exc.strerror}", "")
    raise ConfigError((problem,))


def _too_large(path: Path) -> Problem:
    return Problem(
        str(path),
        f"the config file is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB: refused unread",
        "a config file is a few kilobytes; check that the path names the config file",
    )


@dataclass(frozen=True, slots=True)
class _Template:
    """A scalar holding `${...}`, substituted after parsing; plain (unquoted) ones are retyped."""

    text: str
    plain: bool
    line: int


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps `${VAR}` scalars for substitution and notes duplicate keys."""

    duplicates: list[tuple[int, int, str]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    mark = key_node.start_mark
                    self.duplicates.append((mark.line + 1, mark.column + 1, key_node.value))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str | _Template:
    value = loader.construct_scalar(node)
    if "${" in value:
        return _Template(value, plain=node.style is None, line=node.start_mark.line + 1)
    return value


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def _parse(text: str, name: str) -> tuple[Any, list[Problem]]:
    loader = _Loader(text)
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_aliases(node, name)
        tree = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError((_yaml_problem(exc, text, name),)) from None
    except RecursionError:
        hint = "a config is a few levels deep; check the brackets and indentation"
        raise ConfigError((Problem(name, "invalid YAML: nested too deeply", hint),)) from None
    finally:
        loader.dispose()
    problems = [
        Problem(f"{name}:{line}:{col}", f"duplicate key '{key}'", "remove one; the later would win")
        for line, col, key in loader.duplicates
    ]
    return tree, problems


def _check_aliases(root: yaml.Node, name: str) -> None:
    """Refuse a document whose aliases would expand it by more than `MAX_ALIAS_NODES` values,
    or that refers to itself: counted on the composed graph, each node once, before any value
    is built (a "billion laughs" file is a few hundred bytes of anchors)."""
    expanded, own = _expanded_size(root)
    if expanded is None:
        raise ConfigError(
            (
                Problem(
                    name, "invalid YAML: an alias refers to the value that contains it", _NO_LOOP
                ),
            )
        )
    if expanded - own > MAX_ALIAS_NODES:
        message = (
            f"YAML aliases would expand the config by {expanded - own:,} values "
            f"(at most {MAX_ALIAS_NODES:,})"
        )
        raise ConfigError((Problem(name, message, _FEWER_ALIASES),))


_NO_LOOP = "an alias (*name) must not point at an anchor (&name) that contains it"
_FEWER_ALIASES = "write the repeated settings out, or use fewer nested anchors (&name / *name)"


def _expanded_size(root: yaml.Node) -> tuple[int | None, int]:
    """(values in the document once every alias is expanded, distinct nodes in it); the first
    is None for a document that contains itself. Iterative, each node counted once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return None, len(sizes)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)], len(sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _yaml_problem(exc: yaml.YAMLError, text: str, name: str) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(name, f"invalid YAML: {exc}", "")
    mark = exc.problem_mark or exc.context_mark
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    problem = str(exc.problem or exc.context or "unreadable YAML")
    hint = "check the indentation and quoting on this line"
    if "'\\t'" in problem:
        hint = "YAML indents with spaces, not tabs"
    elif "${" in line:
        hint = 'inside [...] or {...}, quote a value holding ${...}: "${VAR}"'
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
    return Problem(where, f"invalid YAML: {problem}", hint)


# -- ${VAR} substitution -------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RETYPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
_RESOLVER = yaml.resolver.Resolver()


def _substitute(
    node: Any, env: Mapping[str, str], path: tuple[str, ...], out: list[Problem]
) -> Any:
    if isinstance(node, _Template):
        return _expand(node, env, ".".join(path), out)
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            key = _substitute(key, env, path, out)
            result[key] = _substitute(value, env, (*path, str(key)), out)
        return result
    if isinstance(node, list):
        return [_substitute(v, env, (*path, str(i)), out) for i, v in enumerate(node)]
    return node


def _expand(template: _Template, env: Mapping[str, str], path: str, out: list[Problem]) -> Any:
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
    hint = f"export {name}=..., or give a default: ${{{name}:-value}}"
    return Problem(path, f"environment variable {name} is not set", hint)


def _malformed(path: str, reference: str) -> Problem:
    hint = "write ${NAME} or ${NAME:-default}; write $${ for a literal ${"
    return Problem(path, f"malformed variable reference '{reference}'", hint)


# -- pydantic errors in plain words -----------------------------------------------------------


def _from_pydantic(error: ErrorDetails) -> Problem:
    raw_loc = error["loc"]
    loc = schema.clean_loc(raw_loc)
    kind, ctx = error["type"], error.get("ctx") or {}
    field = next((str(p) for p in reversed(loc) if not isinstance(p, int)), "")
    is_key = bool(raw_loc) and raw_loc[-1] == "[key]"
    shown = _show(error.get("input"), loc)
    hint = str(ctx.get("hint", ""))
    if kind == "extra_forbidden":
        valid = schema.fields_at(raw_loc[:-1])
        close = difflib.get_close_matches(field, valid, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"valid here: {', '.join(valid)}"
        return Problem(_dotted(loc), "unknown setting", hint)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ctx.get("expected_tags", "'openai_like', 'gemini'")
        what = (
            f"unknown provider_type '{ctx['tag']}'" if "tag" in ctx else "provider_type is missing"
        )
        return Problem(_dotted((*loc, "provider_type")), what, f"use one of: {expected}")
    message, default_hint = _describe(kind, ctx, shown, error["msg"])
    if is_key:
        message = f"invalid key: {message}"
        if "fast_status_mapping" in loc:
            default_hint = "an HTTP status code from 100 to 599"
    return Problem(_dotted(loc), message, hint or default_hint or schema.default_hint(raw_loc))


def _describe(kind: str, ctx: Mapping[str, Any], shown: str, msg: str) -> tuple[str, str]:
    """Plain words for a pydantic error type: (message, hint)."""
    got = f", got {shown}" if shown else ""
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    types = {
        "int": ("a whole number", "digits only, e.g. 30"),
        "float": ("a number", "e.g. 2.5"),
        "bool": ("true or false", "write true or false"),
        "string": ("text", "quote the value"),
        "dict": ("a mapping", "indent 'name: value' lines under it"),
        "model": ("a mapping", "indent 'name: value' lines under it"),
        "list": ("a list", "write '- item' lines or [a, b]"),
        "tuple": ("a list", "write '- item' lines or [a, b]"),
        "path": ("a file or folder path", "e.g. keys/gemini"),
    }
    if kind == "missing":
        return "required setting is missing", "add it; see examples/full_config.yaml"
    if kind in bounds:
        words, key = bounds[kind]
        limit = ctx[key]
        bound = f"{limit:g}" if isinstance(limit, float) else str(limit)
        return f"must be {words} {bound}{got}", ""
    if kind in ("enum", "literal_error"):
        return f"{shown or 'this value'} is not allowed", f"use one of: {ctx['expected']}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty", ""
    if kind == "value_error":
        return msg.removeprefix("Value error, "), ""
    family = kind.split("_")[0]
    if family in types:
        what, hint = types[family]
        return f"expected {what}{got}", hint
    return msg, ""


def _show(value: Any, loc: Sequence[str | int]) -> str:
    """The offending input as it may be shown: scalars only, never under a secret setting."""
    if any(isinstance(p, str) and _SECRET.search(p) for p in loc):
        return ""
    if value is None:
        return "an empty value"
    if isinstance(value, bool | int | float):
        return repr(value).lower() if isinstance(value, bool) else repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return f"a {_kind(value)}" if isinstance(value, dict | list) else ""


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _kind(value: Any) -> str:
    names = {dict: "mapping", list: "list", str: "text", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


# -- keeping secrets secret ----------------------------------------------------------------------

_SECRET = re.compile(r"token|password|secret|key$|credential|url$|access_control", re.I)


def _secrets(node: Any, secret: bool = False) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _secrets(value, secret or bool(_SECRET.search(str(key))))
    elif isinstance(node, list):
        for value in node:
            yield from _secrets(value, secret)
    elif secret and isinstance(node, str) and len(node) >= 4:
        yield node
        # a URL's password on its own (it may be echoed after percent-decoding)
        yield from (p for p in re.findall(r"//[^:/@]*:([^@/]+)@", node) if len(p) >= 4)


def _scrub(problem: Problem, secrets: Sequence[str]) -> Problem:
    path, message, hint = problem.path, problem.message, problem.hint
    for secret in secrets:
        path = path.replace(secret, mask(secret))
        message = message.replace(secret, mask(secret))
        hint = hint.replace(secret, mask(secret))
    return Problem(path, message, hint)
