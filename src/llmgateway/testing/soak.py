"""A soak run: steady load on a running gateway process while its memory, open files and
event-loop tasks are sampled, to show that none grows (no leaked buffers, connections or
tasks).

Used by `tests/soak/` (scaled down) and `bench/soak.py` (full length). Linux only: the
samples come from `/proc/<pid>`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
STREAM = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the gateway process: seconds since the start, RSS, open descriptors,
    requests answered so far, and the tasks in its event loop (`llmgateway_event_loop_tasks`)."""

    at: float
    rss_mib: float
    open_files: int
    requests: int
    tasks: int


@dataclass(slots=True)
class SoakReport:
    """What a soak run saw."""

    samples: list[Sample] = field(default_factory=list)
    requests: int = 0
    errors: int = 0

    def growth_mib(self, warmup: float) -> float:
        """RSS at the end minus RSS just after `warmup` seconds (medians of a few samples)."""
        settled = [s for s in self.samples if s.at >= warmup]
        return _median_growth(settled, lambda s: s.rss_mib)

    def file_growth(self, warmup: float) -> int:
        """Open descriptors at the end minus just after `warmup` seconds."""
        settled = [s for s in self.samples if s.at >= warmup]
        return settled[-1].open_files - settled[0].open_files if settled else 0

    def task_growth(self, warmup: float) -> float:
        """Event-loop tasks at the end minus just after `warmup` seconds (medians of a few
        samples taken under load: requests in flight come and go, a leak only climbs)."""
        settled = [s for s in self.samples[:-1] if s.at >= warmup]  # the last one is idle
        return _median_growth(settled, lambda s: s.tasks)


def _median_growth(samples: list[Sample], value: Callable[[Sample], float]) -> float:
    """`value` over the last fifth of `samples` minus over the first fifth (medians)."""
    if len(samples) < 2:
        return 0.0
    width = max(1, len(samples) // 5)
    return statistics.median(map(value, samples[-width:])) - statistics.median(
        map(value, samples[:width])
    )


def rss_mib(pid: int) -> float:
    """The resident set size of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def open_files(pid: int) -> int:
    """How many descriptors (files, sockets) a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(
    url: str,
    token: str,
    pid: int,
    seconds: float,
    *,
    metrics_token: str,
    concurrency: int = 16,
    sample_every: float = 1.0,
) -> SoakReport:
    """Send chat and streaming requests (alternating) from `concurrency` clients to the
    gateway at `url` for `seconds`, sampling process `pid` every `sample_every` seconds (its
    `/metrics` read with `metrics_token`)."""
    report = SoakReport()
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    target = f"{url}/v1/chat/completions"
    started = time.monotonic()
    end = started + seconds

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        while time.monotonic() < end:
            body = STREAM if (report.requests + index) % 2 else CHAT
            async with session.post(target, data=body, headers=headers) as response:
                await response.read()
                report.requests += 1
                report.errors += response.status != 200

    async def look(scraper: aiohttp.ClientSession) -> Sample:
        tasks = await event_loop_tasks(scraper, url, metrics_token)
        at = time.monotonic() - started
        return Sample(at, rss_mib(pid), open_files(pid), report.requests, tasks)

    async def sampler(scraper: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            report.samples.append(await look(scraper))
            await asyncio.sleep(sample_every)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        aiohttp.ClientSession() as scraper,  # its own connection: never queued behind load
    ):
        await asyncio.gather(sampler(scraper), *(client(session, i) for i in range(concurrency)))
        report.samples.append(await look(scraper))
    return report


async def event_loop_tasks(session: aiohttp.ClientSession, url: str, token: str) -> int:
    """`llmgateway_event_loop_tasks` from the gateway's `/metrics` (-1 when it is missing)."""
    headers = {"authorization": f"Bearer {token}"}
    async with session.get(f"{url}/metrics", headers=headers) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("llmgateway_event_loop_tasks "):
            return int(float(line.split()[1]))
    return -1
