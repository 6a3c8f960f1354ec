"""What `llmgateway gateway` writes, read from the real command's stderr and `logging.dir`
files: no terminal escape code in any line of either format (uvicorn's lines included), the
`request done` access line of `logging.access` with method, path (no query), status, client,
provider, model, attempts and key fingerprint, and with `--workers 2` each process's own."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from llmgateway.observe.masking import fingerprint
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, free_port, gateway_settings, wait_ready

GOOD = "sk-good-openai-000000000001"
GEMINI = "AIza-good-gemini-00000000001"
WRONG = "wrong-token-Pz3Kd8Wq5Rt1yHxV"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Ran:
    """What one gateway run wrote: its stderr and its log files' text."""

    stderr: str
    files: dict[str, str]

    def everything(self) -> str:
        return self.stderr + "".join(self.files.values())


@asynccontextmanager
async def gateway(
    tmp_path: Path, fake: FakeUpstream, logging: dict[str, Any], *args: str
) -> AsyncIterator[tuple[str, Ran]]:
    """`llmgateway gateway` with `logging` settings, on `fake`; yields its URL and, filled in
    once it stopped (SIGTERM), what it wrote."""
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", [GEMINI])
    data = gateway_settings(tmp_path, fake).model_dump(mode="json", exclude_defaults=True)
    data["logging"] = {"dir": str(tmp_path / "logs"), **logging}
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "gateway", "--config", str(config),
        "--port", str(port), *args,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ran = Ran("", {})
    try:
        await wait_ready(url, process)
        yield url, ran
    finally:
        if process.returncode is None:
            process.send_signal(
                signal.SIGTERM
            )  # as a container stop (Ctrl-C adds click's "Aborted!")
        _, err = await asyncio.wait_for(process.communicate(), 30)
        ran.stderr = err.decode()
        ran.files = {p.name: p.read_text() for p in sorted((tmp_path / "logs").glob("*.log"))}


async def some_traffic(url: str) -> None:
    """A success with a query string, a wrong Bearer token, a wrong Gemini `?key=`."""
    async with httpx.AsyncClient() as http:
        ok = await http.post(
            f"{url}/v1/chat/completions?trace=yes",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            json=CHAT,
        )
        assert ok.status_code == 200
        wrong = await http.post(
            f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {WRONG}"}, json=CHAT
        )
        assert wrong.status_code == 401
        native = f"{url}/v1beta/models/gemini-2.5-flash:generateContent?key={WRONG}"
        assert (await http.post(native, json={"contents": []})).status_code == 401


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_plain(ran: Ran) -> None:
    """No escape code, raw or as JSON writes one, in stderr or any file; and uvicorn's own
    lines (the ones that used to carry them) were there."""
    text = ran.everything()
    assert "\x1b" not in text
    assert "\\u001b" not in text
    assert "color_message" not in text
    assert "Application startup complete." in ran.stderr
    assert WRONG not in text
    assert WRONG[-4:] not in text


@pytest.mark.parametrize("form", ["console", "json"])
async def test_no_escape_codes_in_any_line_of_either_format(
    form: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    async with gateway(tmp_path, fake, {"format": form, "level": "DEBUG"}) as (url, ran):
        await some_traffic(url)
    assert_plain(ran)
    assert ran.files, "logging.dir got its files"
    for text in ran.files.values():
        json_lines(text)  # files are JSON whatever the format
    if form == "json":
        json_lines(ran.stderr)
    # the 401 is an INFO line without the token (the second, 1 ms later, waits for a summary)
    assert "refused a request: wrong gateway token" in ran.stderr


@pytest.mark.parametrize("form", ["console", "json"])
async def test_the_access_log_has_one_line_per_request(
    form: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    logging = {"format": form, "level": "INFO", "access": True}
    async with gateway(tmp_path, fake, logging) as (url, ran):
        await some_traffic(url)
    assert_plain(ran)
    done = [
        line for line in json_lines(ran.files["gateway.log"]) if line["event"] == "request done"
    ]
    assert [line["status"] for line in done] == [200, 401, 401]
    ok, bearer, native = done
    assert ok["level"] == "info"
    assert (ok["method"], ok["path"], ok["client"]) == ("POST", "/v1/chat/completions", "127.0.0.1")
    assert (ok["provider"], ok["model"], ok["attempts"]) == ("openai", "gpt-4o-mini", 1)
    assert ok["key"] == fingerprint(GOOD)
    assert isinstance(ok["duration_ms"], float)
    assert ok["outcome"] == "ok"
    assert (bearer["provider"], bearer["outcome"]) == ("none", "wrong_token")
    assert native["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert "trace=yes" not in ran.everything()
    assert "uvicorn.access" not in ran.everything()
    if form == "console":
        lines = [line for line in ran.stderr.splitlines() if "request done" in line]
        assert len(lines) == 3
        for part in ("method=POST", "path=/v1/chat/completions", "status=200", "client=127.0.0.1"):
            assert part in lines[0]
        assert f"key={fingerprint(GOOD)}" in lines[0]
    else:
        on_stderr = [line for line in json_lines(ran.stderr) if line["event"] == "request done"]
        # each handler stamps its own time
        for line in on_stderr + done:
            del line["timestamp"]
        assert on_stderr == done


async def test_without_the_access_log_a_success_writes_no_line(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with gateway(tmp_path, fake, {"format": "json", "level": "INFO"}) as (url, ran):
        await some_traffic(url)
    done = [line for line in json_lines(ran.stderr) if line["event"] == "request done"]
    assert done == []  # 401s are the throttled `llmgateway.auth` line's, not one per request
    refused = [line for line in json_lines(ran.stderr) if line["logger"] == "llmgateway.auth"]
    assert len(refused) == 1
    assert (refused[0]["client"], refused[0]["path"]) == ("127.0.0.1", "/v1/chat/completions")


async def test_each_worker_process_writes_its_own_access_lines(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    logging = {"format": "console", "level": "INFO", "access": True}
    async with gateway(tmp_path, fake, logging, "--workers", "2") as (url, ran):
        folder = tmp_path / "logs"

        def writers() -> int:
            return sum("request done" in p.read_text() for p in folder.glob("gateway-*.log"))

        sent = 0
        # fresh connections, until both processes served some (the kernel hands a shared
        # socket's connections to whichever accepts first)
        while sent < 10 or (writers() < 2 and sent < 400):
            async with httpx.AsyncClient() as fresh:
                answer = await fresh.post(
                    f"{url}/v1/chat/completions?n={sent}",
                    headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                    json=CHAT,
                )
                assert answer.status_code == 200
            sent += 1
    assert_plain(ran)
    per_process = {
        name: [line for line in json_lines(text) if line["event"] == "request done"]
        for name, text in ran.files.items()
        if name.startswith("gateway-")
    }
    assert len([lines for lines in per_process.values() if lines]) == 2
    assert sum(len(lines) for lines in per_process.values()) == sent
    ids = [line["request_id"] for lines in per_process.values() for line in lines]
    assert len(set(ids)) == sent
    assert all(line["path"] == "/v1/chat/completions" for v in per_process.values() for line in v)
    assert len([line for line in ran.stderr.splitlines() if "request done" in line]) == sent
    assert "uvicorn.access" not in ran.everything()


def drain(fd: int, into: bytearray) -> threading.Thread:
    """Read a pty's main end into `into` until the other end is gone (a thread: a pty's
    buffer is small, and a writer blocks when it is full)."""

    def read() -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every copy of the other end closed
                return
            if not chunk:
                return
            into.extend(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("form", "no_color", "coloured"),
    [("console", False, True), ("console", True, False), ("json", False, False)],
)
async def test_only_console_lines_on_a_terminal_are_coloured(
    form: str, no_color: bool, coloured: bool, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", [GEMINI])
    data = gateway_settings(tmp_path, fake).model_dump(mode="json", exclude_defaults=True)
    data["logging"] = {"format": form, "dir": str(tmp_path / "logs")}
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    if no_color:
        env["NO_COLOR"] = "1"
    main, terminal = pty.openpty()
    written = bytearray()
    reader = drain(main, written)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", "gateway", "--config", str(config),
            "--port", str(port),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=terminal,
        )  # fmt: skip
        os.close(terminal)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", process)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
        await asyncio.to_thread(reader.join, 10)
    finally:
        os.close(main)
    text = written.decode()
    assert "Application startup complete." in text
    assert ("\x1b[" in text) is coloured
    files = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "Application startup complete." in files
    assert "\x1b" not in files
    assert "\\u001b" not in files + text
