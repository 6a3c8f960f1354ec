"""Copying bytes between two TCP connections (the test proxy and the test relay)."""

from __future__ import annotations

import asyncio
import contextlib


async def pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes, then stop both copies and close upstream."""
    outbound = asyncio.ensure_future(pipe(reader, up_writer))
    inbound = asyncio.ensure_future(pipe(up_reader, writer))
    try:
        await asyncio.wait([outbound, inbound], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (outbound, inbound):
            task.cancel()
        await asyncio.gather(outbound, inbound, return_exceptions=True)
        up_writer.close()


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy `source` to `sink` until it ends, then half-close `sink`."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError):
        sink.write_eof()
