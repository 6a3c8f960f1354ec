"""Token usage read from an upstream's answer, without parsing more than the usage object.

Every format names its usage object `"usage"` (OpenAI chat, completions, embeddings and the
Responses API; Anthropic's `message_start` and `message_delta`) or `"usageMetadata"` (Gemini).
An unescaped `"usage"` can only be a key (a quote inside a JSON string is escaped), and a usage
object nests at most two levels of objects, so one regular expression finds the object and only
that object (a few hundred bytes) is decoded, whatever the size of the answer or the event.

Nothing is read while the answer is relayed: a chunk is only kept (a reference, no copy), the
answer's first `HEAD` bytes and its last `TAIL` bytes, and the usage is read once it is over.
Every format puts the usage it ends with near its end (OpenAI's usage chunk before `[DONE]` and
its `usage` after the choices, Gemini's `usageMetadata` after the candidates, Anthropic's
`message_delta`, the Responses API's `response.completed` with only `user` and `metadata` after
its `usage`), so the last objects are looked for from the end, searching backwards (at most
`_TRIES` markers, stopping at a `"usage":null`: OpenAI's chunks before its usage chunk, the
Responses API's first events); Anthropic gives its input side in its first event
(`message_start`), so for Anthropic the first object is looked for from the beginning too. A
usage object elsewhere is not read. The counts are merged key by key in order, the last value
winning: Gemini's `usageMetadata` and an OpenAI-compatible server's per-chunk usage are
cumulative (never summed), Anthropic's `message_start` gives the input side and `message_delta`
the output so far. Reading a usage object twice changes nothing.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import orjson

from llmgateway.providers.routes import Surface

MARKER = b'"usage'
MOST_TOKENS = 1 << 32
"""The largest count believed (a hostile upstream's 10**30 or -5 is ignored: an hour's sums
stay far within the store's 64-bit columns)."""
HEAD = 2 * 1024
"""The bytes of an answer's beginning where its first usage object is looked for."""
TAIL = 16 * 1024
"""The bytes of an answer's end where its last usage objects are looked for. A stream holds at
most `2 * HEAD + 3 * TAIL` bytes (52 KiB): whole chunks, but one longer than `TAIL` past the
head is cut to its last `TAIL` bytes."""
_KEPT = 3  # the latest usage objects read besides the first
_NULL = b'"usage":null'  # OpenAI's chunks before the usage chunk, the Responses API's early events
_TRIES = 4  # markers tried from each end (OpenAI's `"usage":null` on every chunk is no object)
# possessive: an object left unfinished fails in linear time, never by backtracking
_OBJECT = re.compile(
    rb'"usage(?:Metadata)?"\s*:\s*(\{(?:[^{}]++|\{(?:[^{}]++|\{[^{}]*+\})*+\})*+\})'
)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of one answer. `cached` is part of `input`, `reasoning` part of `output`."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0


class UsageScan:
    """The usage of one answer, fed its bytes (whole, or chunk by chunk as relayed)."""

    __slots__ = ("_head", "_head_size", "_skipped", "_tail", "_tail_size", "surface")

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self._head: list[bytes] = []  # the first chunks, `HEAD` bytes or a little more
        self._head_size = 0
        self._tail: deque[bytes] = deque()  # the latest chunks after the head
        self._tail_size = 0
        self._skipped = False  # bytes between the head and the tail were let go

    def feed(self, chunk: bytes) -> None:
        """Keep one chunk of the answer (a reference: no copy, no search)."""
        if len(chunk) > TAIL:  # rare: the answer whole, or a long read
            self._feed_long(chunk)
        elif self._head_size < HEAD:
            self._head.append(chunk)
            self._head_size += len(chunk)
        else:
            tail = self._tail
            tail.append(chunk)
            size = self._tail_size + len(chunk)
            while size - len(tail[0]) >= TAIL:
                size -= len(tail.popleft())
                self._skipped = True
            self._tail_size = size

    def _feed_long(self, chunk: bytes) -> None:
        """A chunk longer than `TAIL`: its first bytes fill the head, its last the tail."""
        if self._head_size < HEAD:
            if len(chunk) <= HEAD + TAIL:
                self._head.append(chunk)
                self._head_size += len(chunk)
                return
            self._head.append(chunk[: HEAD - self._head_size])
            self._head_size = HEAD
        self._skipped = True
        self._tail.clear()
        self._tail.append(chunk[-TAIL:])
        self._tail_size = TAIL

    def tokens(self) -> Tokens | None:
        """The answer's tokens, or None when it carried no usage."""
        head = b"".join(self._head)
        if not self._skipped:
            return scan_whole(self.surface, head + b"".join(self._tail) if self._tail else head)
        return _read(head, b"".join(self._tail), self.surface)


def scan_whole(surface: Surface, body: bytes) -> Tokens | None:
    """The usage of an answer read whole (or of a stream kept whole)."""
    return _read(body, body, surface)


def _read(head: bytes, tail: bytes, surface: Surface) -> Tokens | None:
    """The tokens of an answer from its beginning and its end (the same bytes, or a head and a
    tail with bytes between them let go): the first usage object of the head and the last
    ones of the tail, merged in order."""
    first = _first(head) if surface == "anthropic" else None
    start = max(len(tail) - TAIL, 0)
    if first is None:
        return _counted(_latest(tail, start), surface)
    if head is tail:  # the first is not read again as one of the latest
        start = max(start, first[0])
    return _counted([first[1], *_latest(tail, start)[-_KEPT:]], surface)


def _first(data: bytes) -> tuple[int, bytes] | None:
    """The first usage object of `data` that begins within `HEAD` bytes (where it ends, and
    the object), looking at `_TRIES` markers at most."""
    at = data.find(MARKER, 0, HEAD)
    for _ in range(_TRIES):
        if at < 0:
            return None
        match = _OBJECT.match(data, at)
        if match is not None:
            return match.end(), match.group(1)
        at = data.find(MARKER, at + len(MARKER), HEAD)
    return None


def _latest(data: bytes, start: int) -> list[bytes]:
    """The last usage objects of `data` that begin at `start` or later (at most `_KEPT + 1`,
    oldest first), looking at `_TRIES` markers at most, from the end."""
    found: list[bytes] = []
    end = len(data)
    for _ in range(_TRIES):
        at = data.rfind(MARKER, start, end)
        if at < 0:
            break
        match = _OBJECT.match(data, at)
        if match is not None:
            found.append(match.group(1))
            if len(found) > _KEPT:
                break
        elif data.startswith(_NULL, at):  # no usage before this point is newer than this
            break
        end = at
    found.reverse()
    return found


def _counted(found: list[bytes], surface: Surface) -> Tokens | None:
    """The tokens of the usage objects found, merged in order."""
    counts: dict[str, int] = {}
    for raw in found:
        _merge(counts, raw)
    return tokens_of(counts, surface)


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
