"""The receiving half of `transport.http1`: one keep-alive connection, the answer arriving on it
(parsed by httptools), and the `Response` handed to the caller.

Nothing an upstream sends is trusted. Interim answers (1xx but 101) are skipped and the final
answer is awaited on the same connection. The heads of one answer may take `MAX_HEAD_BYTES` in
all and `MAX_HEADER_FIELDS` fields each; a status outside 100-599, a 101, a Transfer-Encoding
other than `chunked`, or a malformed answer is a `ProtocolError`, and so is any byte that arrives
once the answer is complete and before the next request goes out (the complete answer stays
readable; the connection is closed, never reused). `Response.read(limit)` stops at `limit`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator
from typing import Protocol, cast

import httptools

from llmgateway.transport.lazy_timer import LazyTimer


class Origin(Protocol):
    """The pool a connection belongs to (`http1.Origin`): given the connection back when an
    answer is done with it, told when it is lost."""

    def give_back(self, conn: Connection) -> None: ...
    def lost(self, conn: Connection) -> None: ...


PAUSE_ABOVE = 256 * 1024
"""Buffered body bytes above which the socket stops being read until the consumer catches up."""

MAX_HEAD_BYTES = 64 * 1024
"""The most the heads of one answer may take in all, interim answers' included (status lines,
header fields, line ends), and the most an upstream may send after the head without any body
byte in it (chunk extensions, trailer fields)."""

MAX_HEADER_FIELDS = 100
"""The most header fields in one head, and in one trailer section."""

_HTTP = b"HTTP/"
_ONE = ord("1")


class ReadTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout."""


class Disconnected(ConnectionResetError):
    """The connection closed before the answer was complete, or the answer was malformed."""


class ProtocolError(Disconnected):
    """The upstream sent something that is not a valid HTTP/1.1 answer: malformed, a head too
    large or with too many fields, a status outside 100-599, a 101, bytes after the answer.
    The message holds a short reason, never what was sent."""


class ResponseTooLarge(ProtocolError):
    """A body read whole (`Response.read(limit)`) grew beyond its limit."""


class Response:
    """An upstream answer: status and headers (names lower-cased, duplicates joined with ", "),
    then the body.

    Read the body with `read(limit)`, `read_prefix()` or `chunks()`, then `close()`: the
    connection goes back to the pool when the body was read to its end, else it is dropped."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_due",
        "_eof",
        "_error",
        "_high",
        "_limit",
        "_read_timeout",
        "_timer",
        "_waiter",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection, read_timeout: float, deadline: float | None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None
        self._conn: Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high = PAUSE_ABOVE  # above this many buffered bytes, `_over` decides
        self._limit = sys.maxsize  # what `read(limit)` allows
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._deadline = deadline
        # one timer per answer, not one per wait (`LazyTimer`); `_due`: the current wait's end
        self._due = 0.0
        self._timer: LazyTimer | None = None

    async def read(self, limit: int) -> bytes:
        """The whole body; `ResponseTooLarge` as soon as more than `limit` bytes arrived (what
        was buffered is dropped, and so is the connection)."""
        if self.content_length is not None and self.content_length > limit:
            self._too_large(limit)
        self._limit = limit
        self._high = min(PAUSE_ABOVE, limit)
        while not self._eof:
            if self._buffered > limit:
                self._too_large(limit)
            await self._wait()
        if self._buffered > limit:
            self._too_large(limit)
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def read_prefix(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (fewer when it is shorter)."""
        while not self._eof and self._buffered < limit:
            await self._wait()
        data = b"".join(self._chunks)[:limit]
        self._chunks.clear()
        self._buffered = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece, as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._conn is not None and self._buffered < PAUSE_ABOVE:
                    self._conn.resume()
                yield chunk
            elif self._eof:
                return
            else:
                await self._wait()

    def close(self) -> None:
        """Done with this answer; safe to call more than once."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reusable=self._eof and self._error is None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._conn is not None and self._conn.paused:  # asked for more: read on
            self._conn.resume()
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now + self._read_timeout
        if self._deadline is not None:
            if self._deadline <= now:
                raise ReadTimeout("the request's deadline passed")
            due = min(due, self._deadline)
        self._due = due
        if self._timer is None:
            self._timer = LazyTimer(loop, self._silent)
        self._timer.at(due)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _silent(self, now: float) -> float | None:
        """The timer fired: the wait in progress ends in `ReadTimeout` when its time is up,
        else the timer looks again when it will be."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return None  # nobody waits: the next wait sets the timer
        if now < self._due:
            return self._due
        waiter.set_exception(ReadTimeout("the upstream sent nothing in time"))
        return None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _too_large(self, limit: int) -> None:
        error = ResponseTooLarge(f"the upstream's answer body is over {limit} bytes")
        self._chunks.clear()
        self._buffered = 0
        self._fail(error)
        raise error

    # fed by the connection
    def _headers_done(self, status: int) -> None:
        self.status = status
        length = self.headers.get("content-length")
        if length is not None and length.isdigit():
            self.content_length = int(length)
        self._wake()

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self._high:
            self._over()
        self._wake()

    def _over(self) -> None:
        """More is buffered than flow control or the read's limit allow."""
        if self._buffered > self._limit:
            self._too_large(self._limit)  # raised inside the parser: the connection is dropped
        if self._conn is not None:
            self._conn.pause()

    def _done(self) -> None:
        if self._error is None:  # a failed answer stays failed
            self._eof = True
            self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = error
            self._wake()


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer it is receiving.

    While the final head has not arrived (`heading`), data is fed to the parser one head at a
    time, so that where an interim answer ends is known: what follows it must be another status
    line. An answer detaches from its connection when it completes; bytes arriving on a
    connection with no answer attached are never parsed, the connection is closed."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None  # attached from `send` until it completes
        self.headers: dict[str, str] = {}  # where header fields go: the attached answer's
        self.complete = False  # the answer ended and the connection may carry another
        self.paused = False
        self.head = False  # the request was a HEAD: its answer has no body
        self.idle_since = 0.0
        self.received = False  # any byte since the request went out
        # the answer being received
        self.heading = False  # its final head has not been parsed yet
        self.lead = b""  # the first bytes of the message being parsed, up to 5
        self.interim = False  # the message being parsed is an interim answer (1xx)
        self.head_bytes = 0  # bytes of its heads so far
        self.tail = b""  # the last bytes of a head that spans reads (to find its end)
        self.fields = 0  # fields of the section being parsed that repeat a name (keys count too)
        self.unparsed = 0  # bytes fed since the parser last produced something

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.response is None:  # idle, or its answer is complete
            self._broken(ProtocolError("the upstream sent bytes after its answer"))
            return
        try:
            if self.heading:  # a final head whole in this read is the usual: fed with its body
                end = data.find(b"\r\n\r\n") + 4 if not self.lead else 0
                if not (
                    16 <= end <= MAX_HEAD_BYTES - self.head_bytes  # 16: "HTTP/1.1 200\r\n\r\n"
                    and data.startswith(_HTTP)
                    and data[9] != _ONE  # "HTTP/1.1 200 OK": not an interim answer's head
                ):
                    self._feed_heads(data)
                    return
                self.lead = _HTTP
                data_size = len(data) - end
            else:
                data_size = len(data)
            self.unparsed += data_size
            self.parser.feed_data(data)
            if self.unparsed > MAX_HEAD_BYTES:
                raise ProtocolError("the upstream sent over 64 KiB of framing without data")
        except ProtocolError as error:
            self._broken(error)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            ours = error.__context__  # what a callback of ours raised, if it was one
            if not isinstance(ours, ProtocolError):
                ours = ProtocolError(f"the upstream sent a malformed HTTP response ({error})")
            self._broken(ours)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.origin.lost(self)
        response, self.response = self.response, None
        if response is None:
            return
        headers = response.headers
        if (
            response.status
            and not self.heading
            and "content-length" not in headers
            and "transfer-encoding" not in headers  # else `chunked`: see `on_headers_complete`
        ):
            response._done()  # a body delimited by the end of the connection
        else:
            response._fail(Disconnected("the upstream closed the connection"))

    # feeding the parser
    def _feed_heads(self, data: bytes) -> None:
        """Feed `data` to the parser one head at a time, checking where each begins, its size,
        and what follows an interim answer's."""
        start, size = 0, len(data)
        while True:
            began = not self.lead  # the message starts at data[start]
            if len(self.lead) < 5:
                self._check_lead(data, start)
            end = self._head_end(data, start)
            if end < 0:  # the head goes on in the next read
                self._count_head(size - start)
                self.tail = (self.tail + data[max(start, size - 3) :])[-3:]
                self.parser.feed_data(memoryview(data)[start:] if start else data)
                return
            self._count_head(end - start)
            self.tail = b""
            if began and data[start + 9 : start + 10] != b"1":  # "HTTP/1.1 200": a final head
                break  # fed with its body in one go, the usual case
            self.parser.feed_data(memoryview(data)[start:end])
            if not self.heading:  # a final head after all (one that spanned reads)
                start = end
                break
            if self.interim:
                raise ProtocolError("the upstream sent an interim answer with a body")
            self.lead = b""  # an interim answer ended with its head: a new message follows
            start = end
            if start == size:
                return
        if start < size:
            self.unparsed += size - end
            self.parser.feed_data(memoryview(data)[start:] if start else data)
            if self.unparsed > MAX_HEAD_BYTES:
                raise ProtocolError("the upstream sent over 64 KiB of framing without data")

    def _check_lead(self, data: bytes, start: int) -> None:
        """An answer starts with "HTTP/" (llhttp also takes RTSP and ICE, and skips line breaks
        before a status line)."""
        lead = self.lead + data[start : start + 5 - len(self.lead)]
        if not _HTTP.startswith(lead):
            raise ProtocolError("the upstream's answer does not start with HTTP/")
        self.lead = lead

    def _head_end(self, data: bytes, start: int) -> int:
        """Where in `data` the head being received ends (past its empty line), else -1."""
        tail = self.tail
        if tail:  # the empty line may have begun in the previous read
            found = (tail + data[:3]).find(b"\r\n\r\n")
            if found >= 0:
                return found + 4 - len(tail)
        found = data.find(b"\r\n\r\n", start)
        return found + 4 if found >= 0 else -1

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ProtocolError("the upstream's answer head is over 64 KiB")

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.response is None:  # a second answer, in the same read as the first
            raise ProtocolError("the upstream sent bytes after its answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers  # the answer's, or after its head a scratch one for trailers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").rstrip(" \t")  # the parser keeps trailing whitespace
        if key in headers:
            headers[key] = f"{headers[key]}, {text}"
            self.fields += 1  # the fields are the keys and these (checked once the section ends)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if len(response.headers) + self.fields > MAX_HEADER_FIELDS:
            raise ProtocolError("the upstream's answer has over 100 header fields")
        self.fields = 0
        if not 100 <= status <= 599:
            raise ProtocolError(f"the upstream answered with status {status}, not in 100-599")
        if status == 101:
            raise ProtocolError("the upstream switched protocols (101), which was not asked for")
        coding = response.headers.get("transfer-encoding")
        if coding is not None:  # one field, "chunked": any other leaves the length in doubt
            if coding.lower() != "chunked":
                raise ProtocolError("the upstream sent a Transfer-Encoding other than chunked")
            response.headers["transfer-encoding"] = "chunked"
        if status < 200:  # an interim answer: skipped, the final one is still to come
            self.interim = True
            response.headers.clear()
            return
        self.heading = False
        self.unparsed = 0
        self.headers = {}  # trailer fields, if any, go there: not the answer's
        response._headers_done(status)
        if self.head:  # the parser cannot know a HEAD answer has no body: end it here, and
            self.response = None  # drop the connection, whose parser now expects one
            response._done()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None:  # after the answer to a HEAD request
            raise ProtocolError("the upstream sent bytes after its answer")
        self.unparsed = 0
        response._body(body)

    def on_chunk_complete(self) -> None:
        self.unparsed = 0

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if len(self.headers) + self.fields > MAX_HEADER_FIELDS:
            raise ProtocolError("the upstream sent over 100 trailer fields")
        self.complete = self.parser.should_keep_alive()  # only valid inside the callback
        response, self.response = self.response, None
        self.unparsed = 0
        assert response is not None
        response._done()

    # the client's side
    def send(self, data: bytes, response: Response) -> None:
        """Write a request (head and body, or the head only) and attach its answer."""
        if self.transport is None:  # closed since it was checked out: it sent something
            response._fail(Disconnected("the upstream closed the connection"))
            return
        self.response = response
        self.headers = response.headers
        self.complete = self.received = self.interim = False
        self.heading = True
        self.head_bytes = self.fields = self.unparsed = 0
        self.tail = self.lead = b""
        self.head = data.startswith(b"HEAD ")
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        """The caller is done with the answer: back to the pool if it was read to its end and
        the connection may carry another, else closed."""
        self.response = None
        if reusable and self.complete and self.transport is not None:
            self.resume()
            self.origin.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.complete = False
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.origin.lost(self)

    def _broken(self, error: BaseException) -> None:
        response, self.response = self.response, None
        if response is not None:
            response._fail(error)
        self.close()
