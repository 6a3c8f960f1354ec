"""`llmgateway demo` as a user runs it: a subprocess, a request through it, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import httpx2 as httpx
import openai

from llmgateway.cli.demo import python_command

ROOT = Path(__file__).resolve().parents[2]


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float = 30) -> str:
    """The output up to the first line matching `pattern` (regex)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, "the demo ended early:\n" + "".join(seen)
            seen.append(line)
            if re.search(pattern, line):
                return "".join(seen)


async def run_as_printed(line: str) -> str:
    """Run a line the demo printed, as a user pasting it into a shell in the repo would; its
    output (it must succeed)."""
    shell = await asyncio.create_subprocess_shell(
        line, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = (await asyncio.wait_for(shell.communicate(), 60))[0].decode()
    assert shell.returncode == 0, f"{line}\n{output}"
    return output


async def test_demo_serves_requests_and_cleans_up_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "demo", "--port", "0",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
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
        tokens = re.search(r"Authorization: Bearer ([\w-]+)' -H 'content-type", intro)
        gemini = re.search(r"x-goog-api-key: ([\w-]+)'", intro)
        scrape = re.search(rf"curl -H 'Authorization: Bearer ([\w-]+)' {url}/metrics\n", intro)
        assert tokens, intro
        assert gemini, intro
        assert scrape, intro
        console = re.search(
            r"the web console: (http://127\.0\.0\.1:\d+/admin/) \(token: ([\w-]+)\)", intro
        )
        assert console, intro
        openai_token, metrics_token = tokens.group(1), scrape.group(1)
        console_url, admin_token = console.group(1), console.group(2)
        distinct = {openai_token, gemini.group(1), metrics_token, admin_token}
        assert len(distinct) == 4, "four different tokens"
        assert all(len(token) >= 32 for token in distinct), "random, from secrets.token_urlsafe"
        assert not {"demo-openai-token", "demo-gemini-token"} & distinct
        assert f'api_key="{openai_token}"' in intro
        # the SDK line works as printed: this Python, which has the openai SDK
        sdk_line = re.search(r"^  (\S+ -c 'from openai import .*')$", intro, re.MULTILINE)
        assert sdk_line, intro
        assert "needs the openai SDK" not in intro
        assert (await run_as_printed(sdk_line.group(1))).strip()
        curl = re.search(r"^  (curl \S+/v1/chat/completions .*)$", intro, re.MULTILINE)
        assert curl, intro
        if shutil.which("curl"):
            assert '"choices"' in await run_as_printed(curl.group(1) + " --silent --fail")
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=openai_token, max_retries=0
        ) as client:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.choices[0].message.content
        async with httpx.AsyncClient() as http:
            refused = await http.get(f"{url}/metrics")
            auth = {"authorization": f"Bearer {metrics_token}"}
            metrics = (await http.get(f"{url}/metrics", headers=auth)).text
            details = (await http.get(f"{url}/readyz", headers=auth)).json()
        assert refused.status_code == 401
        assert set(details["providers"]) == {"openai", "gemini"}
        # the console: a login form for a browser, the pages for the printed token
        async with httpx.AsyncClient() as http:
            to_login = await http.get(console_url)
            overview = await http.get(
                console_url, headers={"authorization": f"Bearer {admin_token}"}
            )
            breakers = await http.get(
                console_url + "breakers", headers={"authorization": f"Bearer {admin_token}"}
            )
        assert to_login.status_code == 303
        assert to_login.headers["location"].startswith("/admin/login")
        assert overview.status_code == 200
        assert breakers.status_code == 200
        assert "openai" in breakers.text
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


def test_the_python_of_the_printed_lines_runs_from_where_the_demo_was_started() -> None:
    repo = Path("/src/repo")
    assert python_command("/src/repo/.venv/bin/python3", repo) == ".venv/bin/python3"
    assert python_command("/usr/bin/python3", repo) == "/usr/bin/python3"
    assert python_command("/src/repo/python3", repo) == "./python3"
    assert python_command("/opt/my env/bin/python", repo) == "'/opt/my env/bin/python'"
