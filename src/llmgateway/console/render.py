"""Rendering a page or a fragment: the template with what every page needs (the CSRF token of
the session, the current path for the navigation, whether htmx asked for a fragment, the
time), as an HTML response."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmgateway.console.context import CONSOLE
from llmgateway.console.session import Session

SESSION = web.RequestKey("console_session", Session)
"""The request's session (set by the auth middleware; absent for a Bearer request)."""


def csrf_of(request: web.Request) -> str:
    """The CSRF token of the request's session ("" for a Bearer request or before login)."""
    session = request.get(SESSION)
    if session is None:
        return ""
    return request.config_dict[CONSOLE].keys.csrf_token(session)


def is_partial(request: web.Request) -> bool:
    """Whether htmx asked for a part of a page (not a boosted full page)."""
    headers = request.headers
    return headers.get("HX-Request") == "true" and headers.get("HX-Boosted") != "true"


def render(
    request: web.Request, template_name: str, status: int = 200, **context: Any
) -> web.Response:
    """`template_name` rendered with `context` and `csrf`, `path`, `partial` and `now`."""
    console = request.config_dict[CONSOLE]
    template = console.templates.get_template(template_name)
    page = template.render(
        csrf=csrf_of(request),
        path=request.path,
        partial=is_partial(request),
        now=console.clock(),
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")
