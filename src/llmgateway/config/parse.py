"""The config text as YAML: safe loading that keeps `${VAR}` scalars for substitution, notes
duplicate keys, refuses alias bombs and self-reference, and reports a syntax error with its line,
column and a hint."""

from __future__ import annotations

from typing import Any

import yaml

from llmgateway.config.problems import ConfigError, Problem
from llmgateway.config.variables import Template

MAX_ALIAS_NODES = 10_000
"""YAML aliases may add at most this many values beyond the document's own nodes (a
"billion laughs" file would otherwise expand to gigabytes while it is being constructed)."""


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


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str | Template:
    value = loader.construct_scalar(node)
    if "${" in value:
        return Template(value, plain=node.style is None, line=node.start_mark.line + 1)
    return value


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def parse(text: str, name: str) -> tuple[Any, list[Problem]]:
    """The YAML document in `text` (`name` is the file, for messages), and its duplicate keys as
    problems; `ConfigError` when it is not YAML or an alias bomb."""
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
