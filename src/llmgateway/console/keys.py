"""The keys page: the (key, model) rows a filter selects, sorted, a page at a time by keyset
cursor (`store.key_page`), with the filter in the URL; and the row actions (disable, enable,
re-check, reset) on one key, by key id, each a job run at once (so in the audit log). htmx
swaps the table on a filter or page change, and the row after an action; without JavaScript
each is a plain page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from llmgateway.console.auth import actor
from llmgateway.console.context import Console
from llmgateway.console.key_query import STATES, Asked, known, parse
from llmgateway.console.key_transfer import import_refusals
from llmgateway.console.render import is_partial, render
from llmgateway.core.egress import NoHealthyProxyError, egress_for
from llmgateway.core.guard import egress_label
from llmgateway.records import KeyFilter
from llmgateway.store import proxy_checks
from llmgateway.store.job_runs import run_action
from llmgateway.store.key_actions import Action, Chosen
from llmgateway.store.key_page import SIZES, KeyPage, PageQuery, Sort, key_page
from llmgateway.store.tables import keys

SORTS = {
    Sort.KEY: "Added",
    Sort.STATUS: "State",
    Sort.FAILING_SINCE: "Failing since",
    Sort.NEXT_CHECK: "Next check",
    Sort.STATUS_CODE: "Code",
}
"""The sortable columns and their headings."""
DONE = {
    Action.DISABLE: "disabled",
    Action.ENABLE: "enabled",
    Action.RESET: "reset",
    Action.RECHECK: "queued for a re-check",
}


def routes(console: Console) -> list[web.RouteDef]:
    """The keys page and the row actions."""

    async def page(request: web.Request) -> web.Response:
        asked = parse(request.query, *known(console.settings.providers))
        return await _page(request, console, asked)

    async def act(request: web.Request) -> web.Response:
        return await _act(request, console)

    return [
        web.get("/keys", page, name="keys"),
        web.post("/keys/{key_id}/{action}", act, name="key-action"),
    ]


async def _egress(console: Console) -> Callable[[str, str], str]:
    """(provider, secret) → the egress the key is bound to, as shown (no credentials)."""
    healthy = await proxy_checks.healthy_proxies(console.store)

    def bound(provider: str, secret: str) -> str:
        settings = console.settings.providers.get(provider)
        if settings is None:
            return "—"
        try:
            return egress_label(egress_for(settings, secret, healthy.get(provider, ())))
        except NoHealthyProxyError:
            return "no healthy proxy"

    return bound


async def _page(request: web.Request, console: Console, asked: Asked) -> web.Response:
    page: KeyPage | None = None
    if not asked.problems:
        page = await key_page(console.store, asked.query, asked.cursor, await _egress(console))
    context: dict[str, Any] = {
        "asked": asked,
        "page": page,
        "sorts": SORTS,
        "sizes": SIZES,
        "states": STATES,
        "providers": sorted(console.settings.providers),
        "back": asked.link(),
    }
    if is_partial(request):  # htmx swaps a 200 only: the problems are in the fragment
        return render(request, "_keys_table.html", **context)
    context["refused"] = import_refusals(console)
    return render(request, "keys.html", status=400 if asked.problems else 200, **context)


async def _act(request: web.Request, console: Console) -> web.Response:
    try:
        key_id = int(request.match_info["key_id"])
        action = Action(request.match_info["action"])
    except ValueError:
        raise web.HTTPNotFound(text="no such key action") from None
    async with console.store.engine.connect() as conn:
        digest = await conn.scalar(sa.select(keys.c.digest).where(keys.c.id == key_id))
    if digest is None:
        raise web.HTTPNotFound(text=f"no key {key_id}")
    # a job run here at once, audited as this request's actor (as the CLI does its own)
    await run_action(console.store, action, Chosen(KeyFilter(), (digest,)), actor(request))
    form = await request.post()
    model = str(form.get("model", ""))[:200] or None
    if not is_partial(request):
        raise web.HTTPSeeOther("/admin/keys" + _back(str(form.get("back", ""))))
    query = PageQuery(KeyFilter(model=model, search=digest), size=SIZES[-1])
    rows = await key_page(console.store, query, None, await _egress(console))
    notice = f"key {digest[:12]} {DONE[action]}"
    return render(request, "_keys_rows.html", rows=rows.rows, notice=notice, back="")


def _back(query: str) -> str:
    """The page's query string to go back to, if it is one (else none)."""
    return query if query.startswith("?") and "\n" not in query and len(query) < 4000 else ""
