"""The receiving side of one keep-alive connection of `transport.http1`: the bytes an upstream
sends, checked and fed to httptools, and handed to the attached `Response`.

Nothing an upstream sends is trusted. Interim answers (1xx but 101) are skipped and the final
answer is awaited on the same connection. The heads of one answer may take `MAX_HEAD_BYTES` in
all and `MAX_HEADER_FIELDS` fields each; a status outside 100-599, a 101, a Transfer-Encoding
other than `chunked`, or a malformed answer is a `ProtocolError`, and so is any byte that arrives
once the answer is complete and before the next request goes out (the complete answer stays
readable; the connection is closed, never reused).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from llmgateway.transport.http1_response import Disconnected, ProtocolError, Response


class Origin(Protocol):
    """The pool a connection belongs to (`http1.Origin`): given the connection back when an
    answer is done with it, told when it is lost."""

    def give_back(self, conn: Connection) -> None: ...
    def lost(self, conn: Connection) -> None: ...


MAX_HEAD_BYTES = 64 * 1024
"""The most the heads of one answer may take in all, interim answers' included (status lines,
header fields, line ends), and the most an upstream may send after the head without any body
byte in it (chunk extensions, trailer fields)."""

MAX_HEADER_FIELDS = 100
"""The most header fields in one head, and in one trailer section."""

_HTTP = b"HTTP/"
_ONE = ord("1")


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
        self.sending = False  # written request bytes the kernel has not taken yet
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
        # told of any byte left unsent and of the last one sent (`sending`), for the write
        # timeout; a request the kernel takes at once, the usual case, costs no call
        self.transport.set_write_buffer_limits(high=0)

    def pause_writing(self) -> None:
        self.sending = True

    def resume_writing(self) -> None:
        self.sending = False
        if self.response is not None:
            self.response._sent(asyncio.get_running_loop().time())

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

    def unsent(self) -> int:
        """Request bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

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
