"""The console's pages as a browser receives them, over a real socket: every answer (pages,
fragments, redirects, refusals, static files, not-found) carries the strict Content-Security-
Policy and the anti-framing, anti-sniffing and no-referrer headers; pages are never cached;
no page has an inline script, style or event handler the policy would have to allow."""

from __future__ import annotations

import re

from llmgateway.console.headers import CSP
from tests.console_rig import ADMIN_TOKEN, Answer, ConsoleRig

INLINE = [
    re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),  # a script without src
    re.compile(r"\sstyle\s*=", re.I),  # a style attribute
    re.compile(r"<style", re.I),
    re.compile(r"\son[a-z]+\s*=", re.I),  # onclick= and the like
    re.compile(r"javascript:", re.I),
    re.compile(r"\shx-on", re.I),  # htmx's inline handlers need eval
]


def assert_guarded(answer: Answer, what: str) -> None:
    headers = answer.headers
    assert headers["Content-Security-Policy"] == CSP, what
    assert "script-src 'self'" in CSP
    assert "unsafe" not in CSP
    assert headers["X-Frame-Options"] == "DENY", what
    assert headers["X-Content-Type-Options"] == "nosniff", what
    assert headers["Referrer-Policy"] == "no-referrer", what


def assert_no_inline_code(answer: Answer, what: str) -> None:
    for pattern in INLINE:
        assert not pattern.search(answer.text), f"{what}: {pattern.pattern}"


async def test_every_answer_carries_the_security_headers(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = {
        "login form": await rig.get("/login"),
        "wrong login": await rig.post("/login", data={"token": "nope"}),
        "right login": await rig.post("/login", data={"token": ADMIN_TOKEN}),
        "no session": await rig.get("/"),
        "htmx without session": await rig.get("/", headers={"HX-Request": "true"}),
        "overview": await rig.get("/", cookie=cookie),
        "proxies": await rig.get("/proxies", cookie=cookie),
        "breakers": await rig.get("/breakers", cookie=cookie),
        "fragment": await rig.post(
            "/breakers/openai/reset",
            cookie=cookie,
            headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
        ),
        "csrf refused": await rig.post("/breakers/openai/reset", cookie=cookie),
        "bearer refused": await rig.get("/", headers={"Authorization": "Bearer x"}),
        "bearer": await rig.get("/proxies", headers=bearer),
        "not found": await rig.get("/no-such-page", cookie=cookie),
        "unknown provider": await rig.post("/breakers/nope/reset", headers=bearer),
        "static": await rig.get("/static/console.css"),
        "missing static": await rig.get("/static/nope.css"),
        "static traversal": await rig.get("/static/%2e%2e/app.py", cookie=cookie),
        "oversized login": await rig.post("/login", data={"token": "x" * 5000}),
    }
    for what, answer in answers.items():
        assert_guarded(answer, what)
    assert answers["static traversal"].status != 200
    assert "console_app" not in answers["static traversal"].text


async def test_pages_are_not_cached_and_static_files_are(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    for page in ("/login", "/", "/proxies", "/breakers"):
        answer = await rig.get(page, cookie=cookie)
        assert answer.headers["Cache-Control"] == "no-store", page
        assert answer.headers["Content-Type"].startswith("text/html"), page
    overview = await rig.get("/", cookie=cookie)
    assets = re.findall(r'(?:src|href)="/admin(/static/[^"]+)"', overview.text)
    assert len(assets) == 3  # htmx, console.js, console.css: each named with its digest
    for asset in assets:
        answer = await rig.get(asset)
        assert answer.status == 200, asset
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    htmx = next(a for a in assets if "htmx-2.0.11" in a)
    assert "htmx" in (await rig.get(htmx)).text


async def test_no_page_has_inline_code(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    pages = {p: await rig.get(p, cookie=cookie) for p in ("/", "/proxies", "/breakers")}
    pages["/login"] = await rig.get("/login")
    for path, answer in pages.items():
        assert answer.status == 200
        assert_no_inline_code(answer, path)
    assert 'name="htmx-config"' in pages["/"].text
    assert '"includeIndicatorStyles": false' in pages["/"].text  # htmx injects no style tag
