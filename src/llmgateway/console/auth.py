"""Who may use the console: the login form (the admin token, compared in constant time, slowed
down after failures), the session cookie it sets, `Authorization: Bearer <admin.token>` for
scripts, the CSRF check of every state-changing cookie request, and logout.

The middleware guards every route of the console but the login form and the static files: pages
never check for themselves. A request without a valid session is sent to the login form (an
htmx request gets a 401 with `HX-Redirect`). Refused tokens are counted in
`llmgateway_auth_failures_total{surface="admin"}` and logged, throttled; never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote

from aiohttp import web

from llmgateway.console.context import CONSOLE, Console
from llmgateway.console.render import SESSION, render
from llmgateway.console.session import (
    COOKIE_NAME,
    SESSION_HOURS,
    Session,
    new_session,
    token_matches,
)
from llmgateway.observe.access import Reason, Refusal, shown_path
from llmgateway.records import Actor

PREFIX = "/admin"
"""Where the console is mounted (the cookie's path)."""
LOGIN = f"{PREFIX}/login"
MAX_LOGIN_BYTES = 4096
"""A login form's body is refused beyond this (a token and a path)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_ROUTES = frozenset({"login", "login-post", "static"})
"""The routes served without a session."""
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
USER_AGENT_SHOWN = 200
_log = logging.getLogger("llmgateway.console")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def actor(request: web.Request) -> Actor:
    """Who made `request`, for the audit log: its session id (`bearer` for a Bearer request),
    the client's address (the connection's peer) and its user agent (cut short)."""
    session = request.get(SESSION)
    agent = request.headers.get("User-Agent", "-")[:USER_AGENT_SHOWN]
    return Actor("bearer" if session is None else session.sid, _address(request), agent)


def _address(request: web.Request) -> str:
    return request.remote or "-"


@web.middleware
async def authenticate(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Let a request through with a valid Bearer token, or a valid session (and, when it
    changes state, its CSRF token); send it to log in otherwise."""
    route = request.match_info.route.name
    if route in PUBLIC_ROUTES:
        return await handler(request)
    console = request.config_dict[CONSOLE]
    header = request.headers.get("Authorization")
    if header is not None:
        refused = _bearer_refused(request, console, header)
        return refused if refused is not None else await handler(request)
    session = current_session(request, console)
    if session is None:
        return _login_first(request)
    request[SESSION] = session
    if request.method not in SAFE_METHODS and not await _csrf_ok(request, console, session):
        return web.json_response({"error": "missing or wrong CSRF token"}, status=403)
    return await handler(request)


def current_session(request: web.Request, console: Console) -> Session | None:
    """The live session of the request's cookie, or None (no cookie, a forged or tampered
    one, expired, logged out)."""
    value = request.cookies.get(COOKIE_NAME)
    session = None if value is None else console.keys.open(value)
    if session is None:
        return None
    now = console.clock()
    if session.expired(now) is not None or console.ended.ended(session.sid, now):
        return None
    return session


def _bearer_refused(request: web.Request, console: Console, header: str) -> web.Response | None:
    """None when the header carries the admin token; else the refusal (401, or 429 while the
    address must wait after failures)."""
    address, now = _address(request), console.clock()
    wait = console.guard.wait(address, now)
    if wait > 0:
        return _too_many(wait)
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and token_matches(given.strip(), console.settings.admin.token):
        console.guard.succeeded(address)
        return None
    _refused(request, console, "wrong" if given.strip() else "missing", "bearer", len(given))
    return web.json_response(
        {"error": "the console needs 'Authorization: Bearer <admin.token>' or a login"},
        status=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _login_first(request: web.Request) -> web.Response:
    """Where a request without a session goes: the login form (401 + HX-Redirect for htmx)."""
    target = f"{LOGIN}?next={quote(request.path_qs, safe='/')}"
    if request.headers.get("HX-Request") == "true":
        return web.Response(status=401, text="log in first", headers={"HX-Redirect": target})
    if request.method in SAFE_METHODS:
        return web.Response(status=303, headers={"Location": target})
    return web.json_response({"error": "log in first"}, status=401)


async def _csrf_ok(request: web.Request, console: Console, session: Session) -> bool:
    """Whether the request carries its session's CSRF token, as a header or a form field."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        field = (await request.post()).get(CSRF_FIELD)
        given = field if isinstance(field, str) else None
    return console.keys.csrf_ok(session, given)


def _refused(
    request: web.Request, console: Console, reason: Reason, sent_as: str, length: int
) -> None:
    """Count and log (throttled) a refused token, and make its address wait longer."""
    console.guard.failed(_address(request), console.clock())
    console.refusals.refused(
        Refusal(
            client=_address(request),
            method=request.method,
            path=shown_path(request.raw_path.encode("ascii", "backslashreplace")),
            surface="admin",
            reason=reason,
            sent_as=sent_as,
            token_length=length,
        )
    )


def _too_many(wait: float) -> web.Response:
    seconds = max(1, round(wait + 0.49))
    return web.json_response(
        {"error": f"too many wrong tokens from this address; try again in {seconds} s"},
        status=429,
        headers={"Retry-After": str(seconds)},
    )


def safe_next(target: str | None) -> str:
    """Where to go after login: a path of the console, else its overview."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and not target.startswith(LOGIN)
        and "//" not in target
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return PREFIX + "/"


def set_session_cookie(request: web.Request, response: web.StreamResponse, s: Session) -> None:
    """Put the sealed session on `response`: HttpOnly, SameSite=Strict, path /admin, Secure
    when the request came over TLS, living until the session's absolute end. Written as a
    header, so that it works before the response goes out too (`renew`)."""
    console = request.config_dict[CONSOLE]
    jar: SimpleCookie = SimpleCookie()
    jar[COOKIE_NAME] = console.keys.seal(s)
    morsel = jar[COOKIE_NAME]
    morsel["path"] = PREFIX
    morsel["max-age"] = s.remaining(console.clock())
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if request.secure:
        morsel["secure"] = True
    response.headers.add("Set-Cookie", morsel.OutputString())


def _sets_cookie(response: web.StreamResponse) -> bool:
    return COOKIE_NAME in response.cookies or any(
        value.startswith(COOKIE_NAME + "=") for value in response.headers.getall("Set-Cookie", ())
    )


async def renew(request: web.Request, response: web.StreamResponse) -> None:
    """Before a response goes out: re-issue the session's cookie with a new last-seen time
    (sliding idle expiry), unless the handler set or deleted the cookie itself."""
    session = request.get(SESSION)
    if session is None or _sets_cookie(response):
        return
    now = int(request.config_dict[CONSOLE].clock())
    set_session_cookie(request, response, Session(session.sid, session.issued, now))


async def login_form(request: web.Request) -> web.Response:
    """The login page."""
    return render(request, "login.html", next=safe_next(request.query.get("next")), error="")


async def login(request: web.Request) -> web.Response:
    """Check the posted token: a session cookie and a redirect, or the form again (401), or
    429 while the address must wait after failures."""
    console = request.config_dict[CONSOLE]
    address, now = _address(request), console.clock()
    fields = await _small_form(request)
    target = safe_next(fields.get("next"))
    wait = console.guard.wait(address, now)
    if wait > 0:
        error = f"Too many wrong tokens from this address: try again in {max(1, round(wait))} s."
        response = render(request, "login.html", status=429, next=target, error=error)
        response.headers["Retry-After"] = str(max(1, round(wait + 0.49)))
        return response
    given = fields.get("token", "")
    if not token_matches(given, console.settings.admin.token):
        _refused(request, console, "wrong" if given else "missing", "login-form", len(given))
        return render(request, "login.html", status=401, next=target, error="Wrong token.")
    console.guard.succeeded(address)
    session = new_session(now)
    _log.info("console login", extra={"client": address, "session": session.sid[:8]})
    response = web.Response(status=303, headers={"Location": target})
    set_session_cookie(request, response, session)
    return response


async def _small_form(request: web.Request) -> dict[str, str]:
    """The login form's fields (the first value of each), its body read up to
    `MAX_LOGIN_BYTES` (413 beyond)."""
    length = request.content_length
    if length is not None and length > MAX_LOGIN_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_LOGIN_BYTES, length)
    body = await request.content.read(MAX_LOGIN_BYTES + 1)
    if len(body) > MAX_LOGIN_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_LOGIN_BYTES, len(body))
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than a login form has
        raise web.HTTPBadRequest(text="not a login form") from None
    return {name: values[0] for name, values in parsed.items()}


async def logout(request: web.Request) -> web.Response:
    """End the session: its cookie deleted, its id refused by this keeper until it would have
    expired; then the login page."""
    session = request.get(SESSION)
    response = web.Response(status=303, headers={"Location": LOGIN})
    if session is not None:
        console = request.config_dict[CONSOLE]
        console.ended.end(session.sid, session.issued + SESSION_HOURS * 3600)
        response.del_cookie(COOKIE_NAME, path=PREFIX)
    return response


def routes() -> list[web.RouteDef]:
    """The login and logout routes."""
    return [
        web.get("/login", login_form, name="login"),
        web.post("/login", login, name="login-post"),
        web.post("/logout", logout, name="logout"),
    ]
