"""The one body rewrite a route makes: the top-level `model` of a JSON request, in place.

Every other byte of the body is kept as the client sent it (no parse and re-dump, which would
reformat numbers and whitespace). The request path has already parsed the body once and refused
one naming `model` twice in an object, so the common case is one substring search.
"""

from __future__ import annotations

import json
import re

_KEY = b'"model"'
_STRING_VALUE = re.compile(rb'\s*:\s*("(?:[^"\\]|\\.)*")', re.DOTALL)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_COLON = re.compile(rb"\s*:\s*")


def rewrite_model(body: bytes, model: str, *, plain: bool = False) -> bytes | None:
    """`body` with its top-level `model` string replaced by `model`.

    `body` must be a JSON object whose top-level `model` is a string, named once (the request
    path has parsed it to resolve the model); None when no such pair is found. `plain` says
    the caller already saw `"model"` only once in the body and no `\\u` escape (the checks
    `conductor.admission` makes before parsing): that one is the pair, found without reading
    the rest of the body.

    In a body without `\\u` escapes the top-level key is spelt `"model"`, and a string value
    cannot hold an unescaped quote: when only one `"model"` is followed by `: "…"`, that is
    the pair (found with C-speed searches, never a Python loop over the body). Anything else (a
    nested `model` string, an escaped key) is settled by walking the tokens."""
    if plain:
        pairs = _string_pairs(body, 1)
    elif b"\\u" not in body:
        pairs = _string_pairs(body, 2)
    else:
        pairs = []
    if len(pairs) == 1:
        return _spliced(body, *pairs[0], model)
    span = _top_level_value(body)
    return None if span is None else _spliced(body, *span, model)


def _string_pairs(body: bytes, most: int) -> list[tuple[int, int]]:
    """Where the string values of the first `most` `"model": "…"` pairs are."""
    found: list[tuple[int, int]] = []
    at = body.find(_KEY)
    while at >= 0:
        value = _STRING_VALUE.match(body, at + len(_KEY))
        if value is not None:
            found.append(value.span(1))
            if len(found) == most:
                break  # the rest of the body is not read
        at = body.find(_KEY, at + len(_KEY))
    return found


def _spliced(body: bytes, start: int, end: int, model: str) -> bytes:
    # one copy of the body (a slice of the tail, then a concatenation, would be two)
    return b"".join((memoryview(body)[:start], json.dumps(model).encode(), memoryview(body)[end:]))


def _top_level_value(body: bytes) -> tuple[int, int] | None:
    """Where the top-level `model` key's string value is, by walking strings and brackets."""
    depth = 0
    tokens = _TOKEN.finditer(body)
    for token in tokens:
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and _is_model_key(body, token):
            value = next(tokens, None)
            if value is None or not value.group().startswith(b'"'):
                return None
            return value.start(), value.end()
    return None


def _is_model_key(body: bytes, token: re.Match[bytes]) -> bool:
    if _COLON.match(body, token.end()) is None:
        return False  # a value, not a key
    try:
        return bool(json.loads(token.group()) == "model")
    except ValueError:
        return False
