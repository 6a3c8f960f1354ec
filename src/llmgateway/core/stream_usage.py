"""`stream_usage: inject`: an OpenAI-format streamed request asks for the usage chunk, and the
client still gets the stream it asked for.

The request: `"stream_options":{"include_usage":true},` is spliced in after the body's opening
brace, when the body has no top-level `stream_options` (the request path has parsed it already
and knows); every other byte stays as the client sent it (as `model_rewrite` does for `model`).

The answer (`UsageStrip`, only when the gateway asked on the client's behalf): with
`include_usage` the upstream adds `"usage":null` to every chunk and a last chunk with empty
`choices` and the usage; both are removed, so the client receives the bytes it would have
received without the option. A chunk that ends inside an event is held until the event is
complete (at most `HELD_LIMIT` bytes), so an event is never half sent before it is judged.
"""

from __future__ import annotations

import re

INJECTED = b'"stream_options":{"include_usage":true},'
HELD_LIMIT = 16 * 1024
"""The most of an unfinished event held back; beyond it the bytes go as they are (a usage-only
chunk is a few hundred bytes: a longer event is not one, and a hostile upstream's endless line
is not held)."""

_COMPACT_NULL = b',"usage":null'
_NULL_USAGE = re.compile(rb'\s*,\s*"usage"\s*:\s*null\b')
_USAGE_EVENT = re.compile(rb'data:[^\r\n]*"usage"\s*:\s*\{[^\r\n]*(?:\r?\n){2}')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_SPACED_NULL = re.compile(rb'"usage"\s*:\s*null\b')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def inject_include_usage(body: bytes) -> bytes | None:
    """`body` (a JSON object without a top-level `stream_options`) asking for the usage chunk;
    None when it does not start with an object."""
    start = body.find(b"{")
    if start < 0 or body[:start].strip():
        return None
    rest = body[start + 1 :].lstrip()
    joiner = INJECTED if not rest.startswith(b"}") else INJECTED[:-1]
    return b"".join((body[: start + 1], joiner, body[start + 1 :]))


class UsageStrip:
    """Removes what `include_usage` added from a relayed stream of chat completion chunks."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        """What of `chunk` (and of what was held) the client gets now."""
        data = self._held + chunk if self._held else chunk
        self._held = b""
        if not data.endswith((b"\n\n", b"\r\n\r\n")):
            cut = _event_end(data)
            if len(data) - cut <= HELD_LIMIT:
                data, self._held = data[:cut], data[cut:]
        # as OpenAI writes it, on every chunk: a C-speed replace (`data` itself when absent)
        data = data.replace(_COMPACT_NULL, b"")
        if b'"usage' not in data:
            return data
        if _SPACED_NULL.search(data) is not None:  # (no literal prefix: tried at every byte)
            data = _NULL_USAGE.sub(b"", data)
        if _NO_CHOICES.search(data) is None:
            return data
        if _one_event(data) and _USAGE_OBJECT.search(data) is not None:
            return b""  # the usage-only chunk, alone: as `_USAGE_EVENT` would drop it
        return _USAGE_EVENT.sub(_unless_choices, data)

    def rest(self) -> bytes:
        """What is still held when the stream ends (an unfinished last event)."""
        held, self._held = self._held, b""
        return held


def _event_end(data: bytes) -> int:
    """Where the last complete event of `data` ends (0: none does)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _one_event(data: bytes) -> bool:
    """`data` is one `data:` line and the blank line ending it."""
    return (
        data.startswith(b"data:")
        and data.endswith(b"\n\n")
        and data.count(b"\n") == 2
        and b"\r" not in data
    )


def _unless_choices(found: re.Match[bytes]) -> bytes:
    """A usage event is dropped when its `choices` is empty (the usage-only chunk)."""
    event = found.group()
    return b"" if _NO_CHOICES.search(event) else event
