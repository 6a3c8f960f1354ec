"""The console's session cookie under attack, over a real socket: no cookie, a forged or
tampered one, one signed with an old admin token, an expired one (absolute and idle, on the
console's injected clock), a logged-out one; and what the cookie is made of."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from llmgateway.console.app import Console, console_app
from llmgateway.console.listener import own_listener
from llmgateway.console.session import Session, SessionKeys
from llmgateway.store import Store
from tests.console_rig import ADMIN_TOKEN, ConsoleRig, console_rig, console_settings
from tests.helpers import ManualClock

PAGES = ["/", "/proxies", "/breakers"]


async def assert_refused(rig: ConsoleRig, cookie: str | None) -> None:
    """Every page sends a browser with `cookie` to the login form, htmx gets a 401 with
    HX-Redirect, and a POST is refused."""
    for page in PAGES:
        answer = await rig.get(page, cookie=cookie)
        assert answer.status == 303, (page, answer.status)
        assert answer.headers["Location"].startswith("/admin/login?next=/admin")
        assert answer.cookie is None  # nothing re-issued
    htmx = await rig.get("/breakers", cookie=cookie, headers={"HX-Request": "true"})
    assert htmx.status == 401
    assert htmx.headers["HX-Redirect"].startswith("/admin/login")
    post = await rig.post("/breakers/openai/reset", cookie=cookie)
    assert post.status == 401
    assert await rig.console.store.breakers() == []  # no reset was asked for


async def test_no_cookie_is_sent_to_the_login_form(rig: ConsoleRig) -> None:
    await assert_refused(rig, None)
    login = await rig.get("/login?next=/admin/proxies")
    assert login.status == 200
    assert 'name="next" value="/admin/proxies"' in login.text


async def test_a_logged_in_session_sees_the_pages(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    for page in PAGES:
        answer = await rig.get(page, cookie=cookie)
        assert answer.status == 200, page
        assert answer.cookie  # re-issued: the idle expiry slides


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "garbage",
        "v1.abc.1800000000.1800000000.",
        "v1.abc.1800000000.1800000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v2.abc.1800000000.1800000000.x",
        "v1." + "a" * 400,
    ],
)
async def test_a_forged_cookie_is_refused(rig: ConsoleRig, forged: str) -> None:
    await assert_refused(rig, forged)


async def test_a_tampered_cookie_is_refused(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    version, sid, issued, seen, signature = cookie.split(".")
    later = str(int(issued) + 3600)
    tampered = [
        ".".join([version, sid[:-1] + ("A" if sid[-1] != "A" else "B"), issued, seen, signature]),
        ".".join([version, sid, later, seen, signature]),  # a later login: a longer life
        ".".join([version, sid, issued, later, signature]),
        ".".join(
            [version, sid, issued, seen, signature[:-1] + ("A" if signature[-1] != "A" else "B")]
        ),
        ".".join([version, sid, issued, seen]),
    ]
    for value in tampered:
        await assert_refused(rig, value)
    assert (await rig.get("/", cookie=cookie)).status == 200  # the real one still works


async def test_only_the_admin_token_can_seal_a_cookie(rig: ConsoleRig) -> None:
    now = int(rig.clock())
    session = Session("chosen-by-attacker", now, now)
    await assert_refused(rig, SessionKeys.of("a-guess-at-the-token-000000").seal(session))
    # the same session sealed with the keys of the real token is accepted: the key is all
    assert (await rig.get("/", cookie=SessionKeys.of(ADMIN_TOKEN).seal(session))).status == 200


async def test_a_new_admin_token_logs_everyone_out_and_keepers_sharing_one_agree(
    tmp_path: Path, rig: ConsoleRig, store: Store, clock: ManualClock
) -> None:
    cookie = await rig.login()
    same = console_settings(tmp_path)
    async with console_rig(same, store, clock) as other_keeper:
        assert (await other_keeper.get("/", cookie=cookie)).status == 200
    rotated = console_settings(tmp_path, token="a-new-admin-token-after-rotation-1")
    async with console_rig(rotated, store, clock) as after_rotation:
        await assert_refused(after_rotation, cookie)


async def test_a_session_ends_after_an_hour_idle(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    rig.clock.advance(59 * 60)
    answer = await rig.get("/", cookie=cookie)
    assert answer.status == 200
    assert answer.cookie is not None
    renewed = answer.cookie
    rig.clock.advance(59 * 60)  # 118 min after login, 59 after the last request
    assert (await rig.get("/", cookie=renewed)).status == 200
    rig.clock.advance(61 * 60)
    await assert_refused(rig, renewed)


async def test_the_old_cookie_is_idle_since_its_own_last_seen(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    rig.clock.advance(30 * 60)
    assert (await rig.get("/", cookie=cookie)).status == 200
    rig.clock.advance(31 * 60)  # the cookie first issued has not been seen for 61 min
    await assert_refused(rig, cookie)


async def test_a_session_ends_12_hours_after_login_however_active(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    for _ in range(14):  # every 50 minutes for 11 h 40 min
        rig.clock.advance(50 * 60)
        answer = await rig.get("/", cookie=cookie)
        assert answer.status == 200
        assert answer.cookie is not None
        cookie = answer.cookie
    rig.clock.advance(20 * 60 + 1)  # 12 h and a second after login, 20 min after a request
    await assert_refused(rig, cookie)


async def test_a_cookie_from_the_future_is_refused(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    rig.clock.advance(-3600)  # or a clock set back: issued "later" than now
    await assert_refused(rig, cookie)


async def test_logout_ends_the_session_and_its_copies(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)
    out = await rig.post("/logout", cookie=cookie, data={"csrf": csrf})
    assert out.status == 303
    assert out.headers["Location"] == "/admin/login"
    assert out.cookie == ""  # deleted
    await assert_refused(rig, cookie)  # a copy of the cookie is refused too


async def test_the_cookie_is_random_httponly_strict_and_scoped(rig: ConsoleRig) -> None:
    first = await rig.post("/login", data={"token": ADMIN_TOKEN})
    second = await rig.post("/login", data={"token": ADMIN_TOKEN})
    header = next(h for h in first.headers.getall("Set-Cookie") if h.startswith("llmgateway_"))
    attributes = {part.strip().partition("=")[0].lower() for part in header.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in header
    assert "Path=/admin" in header
    assert "Max-Age=43200" in header
    assert "secure" not in attributes  # plain HTTP here: see the TLS test
    assert first.cookie
    assert second.cookie
    sid_a, sid_b = first.cookie.split(".")[1], second.cookie.split(".")[1]
    assert sid_a != sid_b
    assert len(sid_a) >= 32


async def test_the_cookie_is_secure_over_tls(
    tmp_path: Path, store: Store, clock: ManualClock
) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    console = Console.create(console_settings(tmp_path), store, clock=clock)
    runner = web.AppRunner(own_listener(console_app(console)))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.post(
                f"https://127.0.0.1:{port}/admin/login",
                data={"token": ADMIN_TOKEN},
                ssl=client_context,
                allow_redirects=False,
            ) as answer,
        ):
            assert answer.status == 303
            header = answer.headers["Set-Cookie"]
    finally:
        await runner.cleanup()
    assert "; Secure" in header
