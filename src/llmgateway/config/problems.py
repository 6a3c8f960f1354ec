"""What is wrong with a configuration, in plain words: `Problem` (a dotted path, what is wrong,
a hint), `ConfigError` carrying all of them, pydantic's errors turned into problems, and
secrets kept out of every message.

Values under token/password/secret/key/url settings are never shown, and any that still appear
in a message are masked with `observe.masking.mask()`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import ErrorDetails

from llmgateway.config import schema
from llmgateway.observe.masking import mask


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


# -- pydantic errors in plain words -----------------------------------------------------------


def from_pydantic(error: ErrorDetails) -> Problem:
    """One pydantic error as a `Problem` at the path the user wrote, in plain words with a hint."""
    raw_loc = error["loc"]
    loc = schema.clean_loc(raw_loc)
    kind, ctx = error["type"], error.get("ctx") or {}
    field = next((str(p) for p in reversed(loc) if not isinstance(p, int)), "")
    is_key = bool(raw_loc) and raw_loc[-1] == "[key]"
    shown = _show(error.get("input"), loc)
    hint = str(ctx.get("hint", ""))
    if kind == "extra_forbidden":
        instead = schema.retired(raw_loc)
        if instead is not None:
            return Problem(_dotted(loc), f"no longer supported, {instead[0]}", instead[1])
        valid = schema.fields_at(raw_loc[:-1])
        close = _closest(field, valid)
        hint = f"did you mean '{close}'?" if close else f"valid here: {', '.join(valid)}"
        return Problem(_dotted(loc), "unknown setting", hint)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ctx.get("expected_tags", "'openai_like', 'gemini', 'anthropic'")
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


def meant_instead(error: ErrorDetails) -> tuple[str | int, ...] | None:
    """For an unknown setting, the pydantic location of the valid setting closest to its name
    (what it most likely means), else None."""
    raw_loc = error["loc"]
    if error["type"] != "extra_forbidden" or not raw_loc or schema.retired(raw_loc) is not None:
        return None
    close = _closest(str(raw_loc[-1]), schema.fields_at(raw_loc[:-1]))
    return None if close is None else (*raw_loc[:-1], close)


def _closest(name: str, valid: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return close[0] if close else None


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
    return f"a {kind_of(value)}" if isinstance(value, dict | list) else ""


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def kind_of(value: Any) -> str:
    """What kind of YAML value `value` is, in words (mapping, list, text, number)."""
    names = {dict: "mapping", list: "list", str: "text", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


# -- keeping secrets secret ----------------------------------------------------------------------

_SECRET = re.compile(r"token|password|secret|key$|credential|url$|access_control", re.I)


def secrets_in(node: Any, secret: bool = False) -> Iterator[str]:
    """Every value of `node` under a secret setting (and a URL's password on its own)."""
    if isinstance(node, dict):
        # under `gateway.tokens`, `token` is secret and `name`, `routes` and `providers` are
        # not: they name what messages talk about, which masking would garble
        for key, value in node.items():
            yield from secrets_in(value, bool(_SECRET.search(str(key))) or _inherits(secret, key))
    elif isinstance(node, list):
        for value in node:
            yield from secrets_in(value, secret)
    elif secret and isinstance(node, str) and len(node) >= 4:
        yield node
        # a URL's password on its own (it may be echoed after percent-decoding)
        yield from (p for p in re.findall(r"//[^:/@]*:([^@/]+)@", node) if len(p) >= 4)


def _inherits(secret: bool, key: object) -> bool:
    return secret and str(key) not in _PLAIN


_PLAIN = frozenset(
    {"name", "routes", "providers", "models", "period", "expires", "allow_ips", "token_sha256"}
)
"""Settings under a secret section that are not secret themselves (`gateway.tokens[].name`)."""


def scrub(problem: Problem, secrets: Sequence[str]) -> Problem:
    """`problem` with each of `secrets` masked wherever it appears."""
    path, message, hint = problem.path, problem.message, problem.hint
    for secret in secrets:
        path = path.replace(secret, mask(secret))
        message = message.replace(secret, mask(secret))
        hint = hint.replace(secret, mask(secret))
    return Problem(path, message, hint)


def read_small_text(path: Path, what: str, limit: int, hint: str, size_hint: str) -> str:
    """The UTF-8 text of `path` (a `what`: "config file", "environment file"), reading at most
    `limit` bytes whatever the file is; ConfigError with one problem (`hint` says how to name
    another file, `size_hint` what such a file looks like) when it cannot be used."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            message = f"the {what} is larger than {limit // 1024 // 1024} MiB: refused unread"
            raise ConfigError((Problem(str(path), message, size_hint),))
        return data.decode("utf-8-sig")
    except FileNotFoundError:
        problem = Problem(str(path), f"{what} not found", hint)
    except IsADirectoryError:
        problem = Problem(str(path), f"is a folder, not a {what}", hint)
    except PermissionError:
        problem = Problem(str(path), f"cannot read the {what}: permission denied", "")
    except UnicodeDecodeError as exc:
        problem = Problem(str(path), f"not UTF-8 text (byte {exc.start})", "save it as UTF-8")
    except OSError as exc:
        problem = Problem(str(path), f"cannot read the {what}: {exc.strerror}", "")
    raise ConfigError((problem,))
