"""The console's screenshots in the README (docs/console-*.png), taken in headless Chromium
from a real `llmgateway serve` on a demo-like data set. Run from the repository:

    .venv/bin/python -m tests.browser.screenshots [--out docs] [--keys 400]

It starts the fake upstream and `serve` (as the browser tests do), sends a little traffic
through the gateway so there is usage and a breaker that opened, logs in and saves each page
as `console-<page>.png` (1280 px wide, whole page), plus the keys page on a phone
(`console-keys-phone.png`, 390 px wide).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from llmgateway.testing.fake_upstream import FakeUpstream
from tests.browser.chromium import browser_problem, launched
from tests.browser.console_server import ConsoleServer, KeySet, console_server
from tests.browser.pages import log_in

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"overview": "/", "keys": "/keys", "proxies": "/proxies", "breakers": "/breakers"}
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


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
                    if suffix and name != "keys":
                        continue
                    await page.goto(f"{console.url}{path}")
                    await page.wait_for_load_state("load")
                    target = out / f"console-{name}{suffix}.png"
                    await page.screenshot(path=target, full_page=True)
                    made.append(target)
                await context.close()
    return made


def demo_keys(total: int) -> KeySet:
    """A pool like a real one: mostly good keys, some invalid, a few out of quota."""
    return KeySet.sized(good=total * 3 // 4, invalid=total // 6, noquota=total // 12)


async def liven(console: ConsoleServer, fake: FakeUpstream) -> None:
    """What makes the pages look lived in (traffic, a breaker): nothing yet."""


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
