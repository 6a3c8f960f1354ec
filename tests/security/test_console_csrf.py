"""Cross-site requests against the console, over a real socket: a state-changing request with
a session cookie must carry the session's CSRF token (header or form field); a request with
`Authorization: Bearer <admin.token>` needs none, and a wrong Bearer token is refused and
counted."""

from __future__ import annotations

import pytest

from llmgateway.store import audit
from tests.console_rig import ADMIN_TOKEN, ConsoleRig

RESET = "/breakers/openai/reset"


async def assert_not_reset(rig: ConsoleRig) -> None:
    assert await rig.console.store.breakers() == []
    assert await audit.recent(rig.console.store) == []


async def test_a_post_without_the_csrf_token_is_refused(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    for data in (None, {}, {"csrf": ""}):
        answer = await rig.post(RESET, cookie=cookie, data=data)
        assert answer.status == 403
        assert "CSRF" in answer.text
    htmx = await rig.post(RESET, cookie=cookie, headers={"HX-Request": "true"})
    assert htmx.status == 403
    await assert_not_reset(rig)


async def test_a_wrong_csrf_token_is_refused(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    other_session = await rig.login()
    theirs = await rig.csrf(other_session)
    mine = await rig.csrf(cookie)
    wrong = [theirs, mine[:-1], mine + "A", mine.upper(), "x" * len(mine)]
    for token in wrong:
        assert token != mine
        as_header = await rig.post(RESET, cookie=cookie, headers={"X-CSRF-Token": token})
        as_field = await rig.post(RESET, cookie=cookie, data={"csrf": token})
        assert (as_header.status, as_field.status) == (403, 403), token
    await assert_not_reset(rig)


async def test_the_right_csrf_token_lets_the_post_through(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)
    as_field = await rig.post(RESET, cookie=cookie, data={"csrf": csrf})
    assert as_field.status == 303
    as_header = await rig.post(
        RESET, cookie=cookie, headers={"X-CSRF-Token": csrf, "HX-Request": "true"}
    )
    assert as_header.status == 200
    assert "requested" in as_header.text
    assert [b.provider for b in await rig.console.store.breakers()] == ["openai"]
    entries = await audit.recent(rig.console.store)
    assert len(entries) == 2
    assert {e.session for e in entries} == {cookie.split(".")[1]}


async def test_the_csrf_token_is_bound_to_the_session_not_the_cookie_refresh(
    rig: ConsoleRig,
) -> None:
    cookie = await rig.login()
    csrf = await rig.csrf(cookie)
    rig.clock.advance(600)
    renewed = (await rig.get("/", cookie=cookie)).cookie
    assert renewed
    assert renewed != cookie
    answer = await rig.post(RESET, cookie=renewed, headers={"X-CSRF-Token": csrf})
    assert answer.status == 303


async def test_a_bearer_request_needs_no_csrf_token(rig: ConsoleRig) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    page = await rig.get("/breakers", headers=auth)
    assert page.status == 200
    assert page.cookie is None  # no session for a script
    answer = await rig.post(RESET, headers=auth)
    assert answer.status == 200
    assert [b.provider for b in await rig.console.store.breakers()] == ["openai"]
    (entry,) = await audit.recent(rig.console.store)
    assert entry.session == "bearer"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"Bearer {ADMIN_TOKEN[:-1]}", "wrong"),
        (f"Bearer {ADMIN_TOKEN}0", "wrong"),
        (f"Bearer {ADMIN_TOKEN.upper()}", "wrong"),
        (f"Basic {ADMIN_TOKEN}", "wrong"),
        (ADMIN_TOKEN, "missing"),
        ("Bearer ", "missing"),
    ],
)
async def test_a_wrong_bearer_token_is_refused_and_counted(
    rig: ConsoleRig, header: str, reason: str
) -> None:
    get = await rig.get("/", headers={"Authorization": header})
    post = await rig.post(RESET, headers={"Authorization": header})
    assert (get.status, post.status) == (401, 401)
    assert get.headers["WWW-Authenticate"] == "Bearer"
    assert rig.auth_failures(reason) == 2
    await assert_not_reset(rig)


async def test_a_wrong_bearer_token_beats_a_good_cookie(rig: ConsoleRig) -> None:
    cookie = await rig.login()
    answer = await rig.get("/", cookie=cookie, headers={"Authorization": "Bearer nope-nope"})
    assert answer.status == 401
