"""The console's screenshots in the README (docs/console-*.png), taken in headless Chromium
from a real `llmgateway serve` on a demo-like data set. Run from the repository:

    .venv/bin/python -m tests.browser.screenshots [--out docs] [--keys 400]

It starts the fake upstream and `serve` (as the browser tests do), sends a little traffic
through the gateway so there is usage and a breaker that opened, logs in and saves each page
as `console-<page>.png` (1280 × 800, the overview whole), plus the overview and the keys page on a
phone (`console-overview-phone.png`, `console-keys-phone.png`, 390 px wide). A page that does
not answer 200 is skipped with a line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from llmgateway.observe.masking import fingerprint
from llmgateway.records import KeyFilter
from llmgateway.store.job_runs import run_action
from llmgateway.store.key_actions import Action, Chosen
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.browser.chromium import browser_problem, launched
from tests.browser.console_server import (
    OPENAI_TOKEN,
    ConsoleServer,
    KeySet,
    console_server,
    open_gemini_breaker,
)
from tests.browser.pages import log_in

if TYPE_CHECKING:
    from playwright.async_api import Page

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "overview": "/",
    "keys": "/keys?provider=openai&sort=status_code&dir=desc&size=25",
    "proxies": "/proxies",
    "breakers": "/breakers",
}
"""Each picture's page: the keys page with the failing openai keys first."""
WHOLE = ("overview",)
"""The pages taken whole; the others as the screen shows them."""
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PHONE_PAGES = ("overview", "keys")
TRAFFIC = 60
"""Requests sent through openai's keys before the pictures."""
DISABLED = 4
"""Out-of-quota keys disabled before the pictures."""
READY = {"overview": "section[aria-labelledby=traffic-heading] figure"}
"""What a page waits for before its picture (the traffic chart: the usage is written behind)."""


async def take(out: Path, keys: int) -> list[Path]:
    """Every screenshot, written into `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="llmgateway-shots-") as folder:
        async with (
            FakeUpstream() as fake,
            console_server(Path(folder), fake, demo_keys(keys)) as console,
            launched() as browser,
        ):
            await liven(console, fake)
            for viewport, suffix in ((WIDE, ""), (PHONE, "-phone")):
                context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
                page = await context.new_page()
                await log_in(page, console)
                await page.wait_for_url(f"{console.url}/")
                for name, path in PAGES.items():
                    if suffix and name not in PHONE_PAGES:
                        continue
                    answer = await page.goto(f"{console.url}{path}")
                    if answer is None or answer.status != 200:
                        status = answer.status if answer else "no answer"
                        print(f"skipped {name}: {path} answered {status}", file=sys.stderr)
                        continue
                    if name in READY:
                        await ready(page, READY[name])
                    target = out / f"console-{name}{suffix}.png"
                    await page.screenshot(path=target, full_page=name in WHOLE)
                    made.append(target)
                await context.close()
    return made


async def ready(page: Page, selector: str) -> None:
    """Wait until `selector` is on `page` (the overview refreshes itself every few seconds, and
    the gateways write their usage behind)."""
    await page.locator(selector).first.wait_for(timeout=60_000)


def demo_keys(total: int) -> KeySet:
    """A pool like a real one: mostly good keys, some invalid, a few out of quota."""
    return KeySet.sized(good=total * 3 // 4, invalid=total // 6, noquota=total // 12)


async def liven(console: ConsoleServer, fake: FakeUpstream) -> None:
    """What makes the pages look lived in: gemini's breaker opened by failing traffic, some
    requests through openai's keys (usage), and a few out-of-quota keys disabled."""
    await open_gemini_breaker(console, fake)
    url = f"{console.gateway_url}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(TRAFFIC):
            async with http.post(url, json=body, headers=headers) as answer:
                await answer.read()
    few = tuple(fingerprint(key) for key in console.keys.openai_noquota[:DISABLED])
    async with console.store() as store:
        await run_action(store, Action.DISABLE, Chosen(KeyFilter(), few))


def main() -> None:
    """Take the screenshots (`--out`, default docs/ of the repository)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--keys", type=int, default=400)
    arguments = parser.parse_args()
    problem = browser_problem()
    if problem is not None:
        sys.exit(problem)
    for path in asyncio.run(take(arguments.out, arguments.keys)):
        print(path)


if __name__ == "__main__":
    main()
