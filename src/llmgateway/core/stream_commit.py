"""The commit point of a streamed answer: hold an SSE stream back until its first event says
whether it is an answer or an error.

A provider may answer `200 text/event-stream` and then send an error as its first event, or end
the stream without any: relayed at once, the 200 leaves nothing to fall back from. `FirstEvent`
is fed the upstream's bytes as they come and says after each chunk (a `Peek`):

- `NEED_MORE`: nothing decided yet (comments such as `: keep-alive`, blank lines, `id:` and
  `retry:` lines, an event not yet complete, a `ping` event, an OpenAI Responses preamble
  such as `response.created`, or Anthropic's `message_start`, which carry no output);
- `COMMIT`: the first data event is an answer, or `limit` bytes came without a decision: relay
  `held`, then the rest as it comes;
- `ERROR`: the first event is an error (`event: error`, or a `data:` object with an `error`
  member, vLLM's `"object": "error"`, a Responses `error` or `response.failed`): `status` and
  `error` are what `classify()` reads (`outcome_of_peek()` does it);
- `EMPTY`: the stream ended, or said `data: [DONE]`, before any data event.

Events follow the SSE rules: lines end in CRLF, LF or CR, fields accumulate until a blank line
ends the event, one space after the colon is dropped, a leading BOM is skipped; an event cut
by the end of the stream still counts. Only `text/event-stream` bodies are for it: Gemini's
stream without `alt=sse` is one JSON array, committed as any other body.

Pure: no I/O, no clock. The caller bounds the wait (the peek timeout) and calls `commit()`
when it passes.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from llmgateway.core.classify import Classified, classify
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome

PEEK_LIMIT_BYTES = 64 * 1024
"""The most a stream is held back: past it, it is committed undecided (never buffered
without bound)."""


class Decision(enum.Enum):
    """What the first event of a stream decided."""

    NEED_MORE = "need_more"
    COMMIT = "commit"
    ERROR = "error"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Peek:
    """The detector's answer after a chunk. Once decided, `held` is every byte fed so far (for
    COMMIT, what to send the client before relaying the rest); for ERROR, `status` is the HTTP
    status the error stands for and `error` the error as a JSON body `classify()` reads."""

    decision: Decision
    held: bytes = b""
    status: int | None = None
    error: bytes = b""


NEED_MORE = Peek(Decision.NEED_MORE)

EMPTY_STREAM = Outcome(reason=ErrorReason.SERVER_ERROR, blame=Blame.PROVIDER, status=200)
"""The outcome of a stream that ended with no data event: the provider failed to answer."""


def outcome_of_peek(provider: Classified, peek: Peek, *, now: float | None = None) -> Outcome:
    """What a decided peek means: success for COMMIT (and NEED_MORE), `classify()` of the
    error event for ERROR, `EMPTY_STREAM` for EMPTY."""
    if peek.decision is Decision.ERROR:
        return classify(provider, peek.status, {}, peek.error, now=now)
    if peek.decision is Decision.EMPTY:
        return EMPTY_STREAM
    return Outcome(reason=None, blame=Blame.NONE, status=200)


_BOM = b"\xef\xbb\xbf"


class FirstEvent:
    """The first-event detector of one stream (see the module docstring). Feed it with
    `feed()`, then `end()` when the stream ends; `commit()` gives up waiting. Once it has
    decided, the caller stops feeding it; every later call returns that decision."""

    __slots__ = ("_data", "_decided", "_ended", "_event", "_held", "_limit", "_pos", "_scan")

    def __init__(self, limit: int = PEEK_LIMIT_BYTES) -> None:
        self._limit = limit
        self._held = bytearray()
        self._pos = 0  # where the next line starts
        self._scan = 0  # no line ends before this offset past `_pos`
        self._data: list[bytes] = []  # the data lines of the event being read
        self._event = b""
        self._ended = False
        self._decided: Peek | None = None

    def feed(self, chunk: bytes) -> Peek:
        """Take the next chunk of the stream and say what is decided now."""
        if self._decided is not None:
            return self._decided
        if not self._held and _plain_first_event(chunk):
            return self._decide(Decision.COMMIT, held=chunk)
        self._held += chunk
        peek = self._read_lines()
        if peek is None and len(self._held) >= self._limit:
            peek = self._decide(Decision.COMMIT)
        return peek or NEED_MORE

    def end(self) -> Peek:
        """The stream ended: decide on what came (an event cut by the end counts)."""
        if self._decided is not None:
            return self._decided
        self._ended = True
        peek = self._read_lines()
        if peek is None and self._pos < len(self._held):  # a last line with no line end
            line = bytes(self._held[self._pos :])
            self._pos = len(self._held)
            peek = self._line(line)
        if peek is None and self._data:
            peek = self._dispatch()
        return peek or self._decide(Decision.EMPTY)

    def commit(self) -> Peek:
        """Stop waiting (the peek timeout passed): commit what came, undecided."""
        return self._decided or self._decide(Decision.COMMIT)

    # -- lines --------------------------------------------------------------------------------

    def _read_lines(self) -> Peek | None:
        buf = self._held
        if self._pos == 0 and buf[:3] == _BOM:
            self._pos = self._scan = 3
        elif self._pos == 0 and len(buf) < 3 and _BOM.startswith(buf) and not self._ended:
            return None  # perhaps a BOM still coming
        while True:
            lf = buf.find(b"\n", self._scan)
            cr = buf.find(b"\r", self._scan, len(buf) if lf < 0 else lf)
            if cr >= 0:
                if cr + 1 == len(buf) and not self._ended:
                    self._scan = cr  # a CR last: the LF of a CRLF may be in the next chunk
                    return None
                end, after = cr, cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif lf >= 0:
                end, after = lf, lf + 1
            else:
                self._scan = len(buf)
                return None
            line = bytes(buf[self._pos : end])
            self._pos = self._scan = after
            peek = self._line(line)
            if peek is not None:
                return peek

    def _line(self, line: bytes) -> Peek | None:
        if not line:
            if self._data:
                return self._dispatch()
            self._event = b""  # an event without data is no event
            return None
        if line[0] == 0x3A:  # ":" a comment (keep-alive)
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        return None  # `id:`, `retry:` and unknown fields change nothing here

    # -- events -------------------------------------------------------------------------------

    def _dispatch(self) -> Peek | None:
        data = b"\n".join(self._data)
        event = self._event
        self._data, self._event = [], b""
        if data.strip() == b"[DONE]":
            return self._decide(Decision.EMPTY)
        if event == b"" and b"error" not in data and b'"type"' not in data:
            return self._decide(Decision.COMMIT)  # no error, no preamble: not worth parsing
        document = _json(data)
        if isinstance(document, list) and document:
            document = document[0]  # Gemini's errors may come in an array
        kind = document.get("type") if isinstance(document, dict) else None
        if event == b"error" or (isinstance(document, dict) and _is_error(document)):
            error = _error_of(document)
            return self._decide(Decision.ERROR, _status_of(error), _body_of(document, data))
        if kind in _PREAMBLE or event in _PREAMBLE_EVENTS:
            return None
        return self._decide(Decision.COMMIT)

    def _decide(
        self,
        decision: Decision,
        status: int | None = None,
        error: bytes = b"",
        held: bytes | None = None,
    ) -> Peek:
        self._decided = Peek(decision, bytes(self._held) if held is None else held, status, error)
        return self._decided


def _plain_first_event(chunk: bytes) -> bool:
    """Whether `chunk` starts with a whole `data: {…}` event, one line ended by a blank line,
    that names no error and no `type` (no preamble): an answer, decided without reading the
    stream line by line (what `_dispatch` would decide on it, for less)."""
    if chunk[:7] != b"data: {":
        return False
    end = chunk.find(b"\n\n")
    if end < 0 or chunk.find(b"\n", 0, end) >= 0 or chunk.find(b"\r", 0, end) >= 0:
        return False
    return chunk.find(b"error", 7, end) < 0 and chunk.find(b'"type"', 7, end) < 0


# events that come before any output (OpenAI Responses' preamble, Anthropic's message_start,
# pings): not an answer yet
_PREAMBLE = frozenset(
    {"response.created", "response.in_progress", "response.queued", "ping", "message_start"}
)
_PREAMBLE_EVENTS = frozenset(name.encode() for name in _PREAMBLE)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None


def _is_error(document: dict[str, Any]) -> bool:
    error = document.get("error")
    if isinstance(error, dict | str) and error:
        return True
    return document.get("object") == "error" or document.get("type") in ("error", "response.failed")


def _error_of(document: Any) -> dict[str, Any]:
    """The error's own fields, wherever the frame keeps them."""
    if not isinstance(document, dict):
        return {}
    error = document.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    response = document.get("response")
    if document.get("type") == "response.failed" and isinstance(response, dict):
        failed = response.get("error")
        return failed if isinstance(failed, dict) else {}
    return document  # older vLLM, a Responses `error` event: the fields at the top level


def _body_of(document: Any, data: bytes) -> bytes:
    """The error as `classify()` reads bodies: `{"error": {…}}` (a frame already so is kept)."""
    if isinstance(document, dict) and (
        isinstance(document.get("error"), dict | str) or document.get("object") == "error"
    ):
        return data
    error = _error_of(document)
    if not error:
        return data
    fields = {k: error[k] for k in ("code", "message", "type", "param") if k in error}
    return json.dumps({"error": fields}, separators=(",", ":")).encode()


def _status_of(error: dict[str, Any]) -> int:
    """The HTTP status an error event stands for: its numeric `code`, Gemini's `status`, an
    OpenAI-style `code` or `type`; else 500 (a stream that failed for the upstream's reasons)."""
    code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    for field in ("status", "code", "type"):
        value = error.get(field)
        if isinstance(value, str) and value in _STATUS_OF_NAME:
            return _STATUS_OF_NAME[value]
    return 500


_STATUS_OF_NAME = {
    # Gemini (google.rpc.Code names)
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    # OpenAI-like codes and types
    "context_length_exceeded": 400,
    "invalid_request_error": 400,
    "invalid_api_key": 401,
    "model_not_found": 404,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "overloaded_error": 529,
    # Anthropic's error types
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
}
