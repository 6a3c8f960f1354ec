"""What hostile clients cost the gateway, for one or more commits, in one command.

    .venv/bin/python bench/edge.py [REF ...] [--loris 500] [--uploads 16] [--upload-mib 32]
        [--window 15]

Each REF (default: the working tree) runs as `llmgateway gateway` (one worker, SQLite, 100 keys,
its code from a detached worktree as in bench/compare.py) on the shared fake upstream, and is
put through, one after the other:

- slow-loris: `--loris` connections each send a request head one header line per second and
  never finish it; meanwhile `/healthz` is asked one request at a time, and its p50/p99 are
  reported, with how many of those connections the gateway still held at the end of `--window`;
- a 100 MB header: one connection sends a header line that never ends; reported: how many MiB
  the client got to send before the gateway answered or closed, the seconds that took, and
  `/healthz`'s p99 meanwhile;
- stalled uploads: `--uploads` authorised requests each declare a `--upload-mib` MiB body, send
  all but its last byte and stall; reported: the gateway's resident memory before and at the
  peak, and how many of those requests were answered within 40 s (a 408 after
  `gateway.client_body_timeout_sec`, 30 s, since this commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from compare import checkout, resolve
from run import TOKEN, fake_upstream, gateway, print_aligned, rss_mib, write_config

STALL_WINDOW_SEC = 40.0


@dataclass(frozen=True, slots=True)
class Figures:
    """One commit's figures (latencies in ms, memory in MiB)."""

    loris_p50: float
    loris_p99: float
    loris_held: int
    header_taken_mib: float
    header_seconds: float
    header_health_p99: float
    rss_before: float
    rss_peak: float
    uploads_answered: int


async def health_latencies(url: str, stop: asyncio.Event) -> list[float]:
    """`/healthz` one request at a time until `stop`; each latency in ms."""
    found: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as answer:
                await answer.read()
            found.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
    return found


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def slow_loris(
    port: int, url: str, connections: int, window: float
) -> tuple[float, float, int]:
    stop = asyncio.Event()
    held: list[asyncio.StreamWriter] = []
    alive = [True] * connections

    async def one(index: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            alive[index] = False
            return
        held.append(writer)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        try:
            while not stop.is_set():
                writer.write(b"x-slow: 1\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await reader.read(1 << 16)  # an answer (408) or the end: it is over
                        break
        except OSError:
            pass
        alive[index] = False

    clients = [asyncio.create_task(one(i)) for i in range(connections)]
    await asyncio.sleep(1.0)
    health = asyncio.create_task(health_latencies(url, stop))
    await asyncio.sleep(window)
    still = sum(alive)
    stop.set()
    latencies = await health
    for writer in held:
        writer.close()
    await asyncio.gather(*clients, return_exceptions=True)
    return p(latencies, 0.5), p(latencies, 0.99), still


async def endless_header(
    port: int, url: str, limit: int = 100 * 1024 * 1024
) -> tuple[float, float, float]:
    stop = asyncio.Event()
    health = asyncio.create_task(health_latencies(url, stop))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-big: ")
    chunk = b"a" * (1 << 20)
    sent = 0
    started = time.perf_counter()
    answered = asyncio.create_task(reader.read(1 << 16))
    try:
        while sent < limit and not answered.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except OSError:
        pass
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(30):
            await answered
    seconds = time.perf_counter() - started
    writer.close()
    stop.set()
    latencies = await health
    return sent / (1 << 20), seconds, p(latencies, 0.99)


async def stalled_uploads(port: int, pid: int, uploads: int, mib: int) -> tuple[float, float, int]:
    before = rss_mib(pid)
    size = mib << 20
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + TOKEN.encode() + b"\r\ncontent-length: %d\r\n\r\n" % size
    )
    answered = 0
    peak = before

    async def one() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        body = b"{" + b" " * (size - 2)  # all but the last byte
        with contextlib.suppress(OSError):
            writer.write(body)
            await writer.drain()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(STALL_WINDOW_SEC):
                if await reader.read(1 << 16):
                    answered += 1
        writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(uploads)]
    while not all(task.done() for task in tasks):
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.5)
    return before, peak, answered


def figures(url: str, pid: int, args: argparse.Namespace) -> Figures:
    port = int(url.rsplit(":", 1)[1])
    p50, p99, held = asyncio.run(slow_loris(port, url, args.loris, args.window))
    taken, seconds, health_p99 = asyncio.run(endless_header(port, url))
    before, peak, answered = asyncio.run(stalled_uploads(port, pid, args.uploads, args.upload_mib))
    return Figures(p50, p99, held, taken, seconds, health_p99, before, peak, answered)


@contextlib.contextmanager
def source(ref: str | None, folder: Path) -> Iterator[Path | None]:
    if ref is None:
        yield None
        return
    with checkout(resolve(ref), folder / f"tree-{ref.replace('/', '_')}") as src:
        yield src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("refs", nargs="*", help="commits to measure (default: the working tree)")
    parser.add_argument("--loris", type=int, default=500)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--upload-mib", type=int, default=32)
    parser.add_argument("--window", type=float, default=15.0)
    args = parser.parse_args()
    refs: list[str | None] = list(args.refs) or [None]
    rows = [
        [
            "commit",
            "healthz p50/p99 ms, N loris",
            "loris held",
            "100 MB header: MiB sent, s",
            "healthz p99 ms",
            "RSS MiB idle -> stalled uploads",
            f"uploads answered in {STALL_WINDOW_SEC:g} s",
        ]
    ]
    with tempfile.TemporaryDirectory(prefix="llmgateway-edge-") as tmp, fake_upstream() as base:
        folder = Path(tmp)
        for index, ref in enumerate(refs):
            config = write_config(folder, base, 100, tag=f"-{index}")
            with source(ref, folder) as src, gateway(config, 1, src) as (url, pid):
                found = figures(url, pid, args)
            rows.append(
                [
                    ref or "working tree",
                    f"{found.loris_p50:.2f} / {found.loris_p99:.2f}",
                    f"{found.loris_held}/{args.loris}",
                    f"{found.header_taken_mib:.1f}, {found.header_seconds:.1f}",
                    f"{found.header_health_p99:.1f}",
                    f"{found.rss_before:.0f} -> {found.rss_peak:.0f}",
                    f"{found.uploads_answered}/{args.uploads}",
                ]
            )
    print_aligned(rows, left=1)


if __name__ == "__main__":
    main()
