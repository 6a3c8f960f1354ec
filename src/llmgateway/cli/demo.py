"""`llmgateway demo`: a self-contained tour on this machine, nothing to configure.

It starts the built-in fake provider, writes a demo config and key files into a temporary
folder (good keys, and keys that are invalid, rate-limited, out of quota or flaky, by the fake's
naming convention), and runs the gateway and the Keeper in one process on SQLite in that
folder, with probe intervals short enough to watch. A little traffic of its own makes the
pool change: every few seconds one line shows the keys by state, as bad keys are found and
cooling keys come back. Ctrl-C stops everything and removes the folder. Its gateway and metrics
tokens are new random ones every run, printed in the lines to try.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import secrets
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from llmgateway.conductor.app import create_app
from llmgateway.conductor.edge import EdgeLimits
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.console.listener import keeper_http
from llmgateway.keeper.run import Keeper
from llmgateway.observe.metrics import Metrics, model_label
from llmgateway.store import Store
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream

OPENAI_KEYS = (
    "sk-demo-good-000000000001",
    "sk-demo-good-000000000002",
    "sk-demo-good-000000000003",
    "sk-demo-invalid-000000000004",
    "sk-demo-ratelimited-000000005",
    "sk-demo-flaky-000000000006",
)
GEMINI_KEYS = (
    "AIza-demo-good-00000000000001",
    "AIza-demo-good-00000000000002",
    "AIza-demo-noquota-000000000003",
)
SUMMARY_EVERY_SEC = 3.0
GEMINI_BODY = '{"contents": [{"parts": [{"text": "hi"}]}]}'
TRAFFIC_EVERY_SEC = 0.5


@dataclass(frozen=True, slots=True)
class DemoTokens:
    """The demo's tokens: two gateway tokens, the metrics token and the console's admin token,
    printed to be tried."""

    openai: str
    gemini: str
    metrics: str
    admin: str

    @classmethod
    def generate(cls) -> DemoTokens:
        """Fresh random tokens (`secrets.token_urlsafe`, 32 characters each)."""
        return cls(*(secrets.token_urlsafe(24) for _ in range(4)))


def demo_settings(folder: Path, fake: FakeUpstream, port: int, tokens: DemoTokens) -> Settings:
    """The demo config: two providers on the fake, SQLite in `folder`, fast probes."""
    fast_outliers = {"consecutive_failures": 2, "base_ejection_sec": 10, "max_ejection_sec": 20}
    document = two_providers(
        folder,
        fake,
        openai_token=tokens.openai,
        gemini_token=tokens.gemini,
        both={
            "worker_health_policy": {"batch_delay_sec": 0},
            "gateway_policy": {"outlier_detection": fast_outliers},
        },
        database={"url": f"sqlite:///{folder / 'demo.db'}"},
        logging={"level": "WARNING"},
        worker={"probe_interval_sec": 10, "sync_interval_sec": 30, "metrics_port": 0},
        gateway={"host": "127.0.0.1", "port": port, "refresh_interval_sec": 1},
        metrics={"access_token": tokens.metrics},
        admin={"token": tokens.admin, "host": "127.0.0.1", "port": 0},  # any free port
    )
    return Settings.model_validate(document)


def write_demo_keys(folder: Path) -> None:
    """The demo's key files, one folder per provider."""
    write_keys(folder / "keys" / "openai", OPENAI_KEYS)
    write_keys(folder / "keys" / "gemini", GEMINI_KEYS)


def python_command(executable: str, cwd: Path) -> str:
    """How to run `executable` (this Python) from `cwd`, for a line to paste: relative to
    `cwd` when inside it (`.venv/bin/python3` from the repo), else its full path."""
    path = Path(executable)
    try:
        shown = str(path.relative_to(cwd))
    except ValueError:
        shown = str(path)
    if "/" not in shown:
        shown = "./" + shown
    return shlex.quote(shown)


def instructions(url: str, folder: Path, tokens: DemoTokens, console: str) -> list[str]:
    """What to try, with the demo's tokens (`console`: the web console's URL). The SDK line
    runs this Python, which has the openai package after `./dev demo` (or says how to add it)."""
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    python = python_command(sys.executable, Path.cwd())
    sdk = (
        "from openai import OpenAI; "
        f'c = OpenAI(base_url="{url}/v1", api_key="{tokens.openai}"); '
        'print(c.chat.completions.create(model="gpt-4o-mini", '
        'messages=[{"role": "user", "content": "hi"}]).choices[0].message.content)'
    )
    metrics = f"-H 'Authorization: Bearer {tokens.metrics}'"
    return [
        f"llmgateway demo: the gateway listens on {url} (demo folder: {folder})",
        "  keys: openai 3 good, 1 invalid, 1 rate-limited, 1 flaky; gemini 2 good, 1 out of quota",
        "  tokens: new random ones for this run",
        "try:",
        f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {tokens.openai}' "
        f"-H 'content-type: application/json' -d '{body}'",
        f"  {python} -c '{sdk}'",
        *(
            []
            if importlib.util.find_spec("openai")
            else [f"  (the line above needs the openai SDK: {python} -m pip install openai)"]
        ),
        f"  curl {url}/v1beta/models/gemini-2.5-flash:generateContent "
        f"-H 'x-goog-api-key: {tokens.gemini}' -H 'content-type: application/json' "
        f"-d '{GEMINI_BODY}'",
        f"  curl {metrics} {url}/metrics",
        f"  curl {metrics} {url}/readyz",
        f"  the web console: {console} (token: {tokens.admin})",
        "Ctrl-C stops the demo and removes its folder.",
    ]


def pool_line(gateway: Any, now: float) -> str:
    """One line: every provider's keys by state (`openai/gpt-4o-mini: 3 healthy, 1 invalid`)."""
    parts = []
    for name, provider in gateway.providers.items():
        by_scope: dict[str, list[str]] = {}
        for (scope, state), count in sorted(provider.pool.counts(now).items()):
            by_scope.setdefault(model_label(scope), []).append(f"{count} {state}")
        parts += [f"{name}/{model}: {', '.join(states)}" for model, states in by_scope.items()]
    return "pool  " + "  |  ".join(parts)


async def run_demo(folder: Path, port: int, echo: Callable[[str], None]) -> None:
    """Run the demo in `folder` until SIGINT or SIGTERM (Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    write_demo_keys(folder)
    tokens = DemoTokens.generate()
    async with FakeUpstream() as fake:
        settings = demo_settings(folder, fake, port, tokens)
        metrics = Metrics.create()
        app = create_app(settings, metrics=metrics, tune_process=True)
        async with (
            running(
                app, "127.0.0.1", port, EdgeLimits.of(settings.gateway), handle_signals=False
            ) as url,
            await Store.configured(settings.database) as store,
            keeper_http(settings, metrics, store) as console,
        ):
            for line in instructions(url, folder, tokens, console or ""):
                echo(line)
            gateway = getattr(app, "state").conductor  # noqa: B009 - the ASGI type hides `state`
            keeper = asyncio.create_task(Keeper(settings, store, metrics=metrics).run(stop))
            helpers = [
                asyncio.create_task(_summaries(gateway, echo)),
                asyncio.create_task(_traffic(url, tokens)),
            ]
            try:
                await stop.wait()
            finally:
                stop.set()
                for task in helpers:
                    task.cancel()
                await asyncio.gather(keeper, *helpers, return_exceptions=True)


async def _summaries(gateway: Any, echo: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(SUMMARY_EVERY_SEC)
        echo(pool_line(gateway, gateway.clock()))


async def _traffic(url: str, tokens: DemoTokens) -> None:
    """A request now and then on each provider, so that bad keys are met and found out."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    gemini = {"contents": [{"parts": [{"text": "hi"}]}]}
    native = f"{url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                headers = {"authorization": f"Bearer {tokens.openai}"}
                async with session.post(f"{url}/v1/chat/completions", json=chat, headers=headers):
                    pass
                headers = {"x-goog-api-key": tokens.gemini}
                async with session.post(native, json=gemini, headers=headers):
                    pass
            await asyncio.sleep(TRAFFIC_EVERY_SEC)
