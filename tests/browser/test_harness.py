"""The browser tests' own tools, on a small page served over loopback with the console's
Content-Security-Policy: Chromium starts from Debian's package, and `Problems` hears a CSP
violation, a console error and an uncaught exception (so the console's tests, which require
that it hears none, can fail)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from playwright.async_api import Browser

from tests.browser.pages import Problems
from tests.helpers import free_port

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The console's policy (issue 17)."""

ICON = '<link rel="icon" href="data:,">'  # as the console's: no request for /favicon.ico
CLEAN = f'<!doctype html><head>{ICON}<script src="/ok.js"></script></head><body>ok</body>'
INLINE = f"<!doctype html><head>{ICON}</head><body><script>document.title = 'x'</script></body>"
BAD = f'<!doctype html><head>{ICON}<script src="/bad.js"></script></head>'
SCRIPT_OK = "document.body && (document.title = 'ok');"
SCRIPT_BAD = "console.error('broken'); undefined_function();"


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[str]:
    """Pages under the console's CSP: clean, an inline script, a failing script."""

    async def respond(request: web.Request) -> web.Response:
        pages = {
            "/clean": (CLEAN, "text/html"),
            "/inline": (INLINE, "text/html"),
            "/bad": (BAD, "text/html"),
            "/ok.js": (SCRIPT_OK, "text/javascript"),
            "/bad.js": (SCRIPT_BAD, "text/javascript"),
        }
        body, kind = pages[request.path]
        return web.Response(text=body, content_type=kind, headers={"Content-Security-Policy": CSP})

    app = web.Application()
    app.router.add_get("/{name}", respond)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def seen_on(browser: Browser, url: str) -> list[str]:
    """What `Problems` heard while `url` loaded."""
    problems = Problems()
    context = await browser.new_context()
    page = await context.new_page()
    problems.watch(page)
    await page.goto(url)
    await page.wait_for_load_state("load")
    await context.close()
    return problems.seen


async def test_problems_hears_csp_violations_errors_and_exceptions(browser: Browser) -> None:
    async with served() as url:
        assert await seen_on(browser, f"{url}/clean") == []
        [violation] = await seen_on(browser, f"{url}/inline")
        assert "Content Security Policy" in violation
        failing = await seen_on(browser, f"{url}/bad")
        assert len(failing) == 2, failing
        assert any(s.startswith("console error: broken") for s in failing), failing
        assert any(s.startswith("uncaught:") and "undefined_function" in s for s in failing)
