"""Token usage read from an upstream's answer, without parsing more than the usage object.

Every format names its usage object `"usage"` (OpenAI chat, completions, embeddings and the
Responses API; Anthropic's `message_start` and `message_delta`) or `"usageMetadata"` (Gemini).
An unescaped `"usage"` can only be a key (a quote inside a JSON string is escaped), and a usage
object nests at most one level of objects, so one regular expression finds the object and only
that object (a few hundred bytes) is decoded, whatever the size of the answer or the event. The
objects are decoded once the answer is over, and only the first and the last three: Gemini
repeats its object on every chunk.

Streams: a chunk without `"usage` costs one substring search (and the chunk's last bytes are
kept, in case the marker is split across chunks); an object cut by a chunk boundary is held (at
most `HELD_LIMIT` bytes) and completed by the next chunk. The counts found are merged key by key
in order,
the last value winning: Gemini's `usageMetadata` and an OpenAI-compatible server's per-chunk
usage are cumulative (never summed), Anthropic's `message_start` gives the input side and
`message_delta` the output so far. Reading a usage object twice changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from llmgateway.providers.routes import Surface

MARKER = b'"usage'
MOST_TOKENS = 1 << 32
"""The largest count believed (a hostile upstream's 10**30 or -5 is ignored: an hour's sums
stay far within the store's 64-bit columns)."""
HELD_LIMIT = 16 * 1024
"""The most of a usage object cut by a chunk boundary kept for the next chunk."""
_KEPT = 3  # the latest usage objects kept besides the first
_EDGE = 16  # bytes of a chunk kept in case the next one completes a split marker
# possessive: an object left unfinished fails in linear time, never by backtracking
_OBJECT = re.compile(rb'"usage(?:Metadata)?"\s*:\s*(\{(?:[^{}]++|\{[^{}]*+\})*+\})')
_EMPTY = re.compile(rb'"usage(?:Metadata)?"\s*:\s*(?:null\b|\{\s*\})')


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of one answer. `cached` is part of `input`, `reasoning` part of `output`."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0


class UsageScan:
    """The usage of one answer, fed its bytes (whole, or chunk by chunk as relayed)."""

    __slots__ = ("_edge", "_first", "_held", "_last", "surface")

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self._first = b""  # the first usage object (Anthropic's input side)
        self._last: list[bytes] = []  # the latest ones (at most `_KEPT`), oldest first
        self._held = b""
        self._edge = b""

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the answer (bounded work when it holds no usage)."""
        if self._held:
            data = self._held + chunk
            self._held = b""
        elif MARKER in chunk or MARKER in self._edge + chunk[:_EDGE]:
            data = self._edge + chunk  # a marker may begin in the previous chunk's last bytes
        else:  # the stream's last bytes, however short its chunks
            edge = chunk if len(chunk) >= _EDGE else self._edge + chunk
            self._edge = edge[-_EDGE:]
            return
        self._edge = data[-_EDGE:]
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        start = data.find(MARKER)
        end = -1
        for found in _OBJECT.finditer(data, start):
            if not self._first:
                self._first = found.group(1)
            else:
                latest = self._last
                latest.append(found.group(1))
                if len(latest) > _KEPT:
                    del latest[0]
            end = found.end()
        last = data.rfind(MARKER)
        if last >= end and _EMPTY.match(data, last) is None and len(data) - last <= HELD_LIMIT:
            self._held = data[last:]  # an object the next chunk completes

    def tokens(self) -> Tokens | None:
        """The answer's tokens, or None when it carried no usage."""
        counts: dict[str, int] = {}
        if self._first:
            _merge(counts, self._first)
        for raw in self._last:
            _merge(counts, raw)
        return tokens_of(counts, self.surface)


def _merge(counts: dict[str, int], raw: bytes) -> None:
    """Add a usage object's counts to `counts`, its values winning (details flattened)."""
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if type(found) is dict:
        for name, value in found.items():
            if type(value) is int:
                if 0 <= value <= MOST_TOKENS:
                    counts[name] = value
            elif type(value) is dict:  # OpenAI's *_tokens_details
                for inner, count in value.items():
                    if type(count) is int and 0 <= count <= MOST_TOKENS:
                        counts[inner] = count


def scan_whole(surface: Surface, body: bytes) -> Tokens | None:
    """The usage of an answer read whole."""
    scan = UsageScan(surface)
    if MARKER in body:
        scan._scan(body)
    return scan.tokens()


def tokens_of(counts: dict[str, int], surface: Surface) -> Tokens | None:
    """Tokens from the merged counts of a usage object, whichever format named them."""
    if not counts:
        return None
    get = counts.get
    if "promptTokenCount" in counts or "candidatesTokenCount" in counts:  # Gemini
        thoughts = get("thoughtsTokenCount", 0)
        return Tokens(
            input=get("promptTokenCount", 0) + get("toolUsePromptTokenCount", 0),
            output=get("candidatesTokenCount", 0) + thoughts,
            cached=get("cachedContentTokenCount", 0),
            reasoning=thoughts,
        )
    if "prompt_tokens" in counts or "completion_tokens" in counts:  # OpenAI chat, embeddings
        return Tokens(
            input=get("prompt_tokens", 0),
            output=get("completion_tokens", 0),
            cached=get("cached_tokens", 0),
            reasoning=get("reasoning_tokens", 0),
        )
    if "input_tokens" not in counts and "output_tokens" not in counts:
        return None
    if surface == "anthropic":  # input_tokens excludes what the cache wrote and read
        read = get("cache_read_input_tokens", 0)
        written = get("cache_creation_input_tokens", 0)
        return Tokens(
            input=get("input_tokens", 0) + read + written,
            output=get("output_tokens", 0),
            cached=read,
        )
    return Tokens(  # the Responses API
        input=get("input_tokens", 0),
        output=get("output_tokens", 0),
        cached=get("cached_tokens", 0),
        reasoning=get("reasoning_tokens", 0),
    )
