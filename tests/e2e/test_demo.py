"""`llmgateway demo` as a user runs it: a subprocess, a request through it, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx2 as httpx
import openai

from llmgateway.demo import OPENAI_TOKEN


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float = 30) -> str:
    """The output up to the first line matching `pattern` (regex)."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, "the demo ended early:\n" + "".join(seen)
            seen.append(line)
            if re.search(pattern, line):
                return "".join(seen)


async def test_demo_serves_requests_and_cleans_up_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "demo", "--port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        intro = await read_until(process.stdout, r"^Ctrl-C")
        found = re.search(r"listens on (http://127\.0\.0\.1:\d+) \(demo folder: (.+)\)", intro)
        assert found, intro
        url, folder = found.group(1), Path(found.group(2))
        assert folder.parent == tmp_path
        assert (folder / "demo.db").exists()
        assert f"curl {url}/v1/chat/completions" in intro
        assert f"curl {url}/metrics" in intro
        assert f'api_key="{OPENAI_TOKEN}"' in intro
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
        assert (
            'llmgateway_requests_total{code="200",model="gpt-4o-mini",provider="openai"}' in metrics
        )
        # the pool summaries show bad keys being found (the invalid key is met sooner or later)
        summary = await read_until(process.stdout, r"^pool .*invalid")
        assert "openai/gpt-4o-mini:" in summary
        assert "gemini/shared:" in summary
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(process.stdout.read(), 30)
    assert await process.wait() == 0, rest.decode()
    assert "removed" in rest.decode()
    assert "Traceback" not in rest.decode()
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []
