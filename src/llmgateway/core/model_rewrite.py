"""The one body rewrite a route makes: the top-level `model` of a JSON request, in place.

Every other byte of the body is kept as the client sent it (no parse and re-dump, which would
reformat numbers and whitespace). The request path has already parsed the body once and refused
one naming `model` twice in an object, so the common case is one regular-expression search.
"""

from __future__ import annotations

import json
import re

_MODEL_PAIR = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"', re.DOTALL)
_VALUE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_COLON = re.compile(rb"\s*:\s*")


def rewrite_model(body: bytes, model: str) -> bytes | None:
    """`body` with its top-level `model` string replaced by `model`.

    `body` must be a JSON object whose top-level `model` is a string, named once (the request
    path has parsed it to resolve the model); None when no such pair is found.

    One match of `"model": "…"` in a body without `\\u` escapes is the top-level pair (the
    top-level key is then spelt plainly, and a string value cannot hold an unescaped quote);
    anything else (a nested `model`, an escaped key) is settled by walking the tokens."""
    if b"\\u" not in body:
        pairs = _MODEL_PAIR.finditer(body)
        first, second = next(pairs, None), next(pairs, None)
        if first is not None and second is None:
            value = _VALUE.search(body, first.start() + len(b'"model"'))
            if value is not None:
                return _spliced(body, value.start(), value.end(), model)
    span = _top_level_value(body)
    return None if span is None else _spliced(body, span[0], span[1], model)


def _spliced(body: bytes, start: int, end: int, model: str) -> bytes:
    return body[:start] + json.dumps(model).encode() + body[end:]


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
