"""No full key in any answer of the console's keys page but the export, over a real socket: every
page of every sort, the htmx fragments, an action's row, and the messages for bad parameters,
even when the secret itself is typed into the filter (the search never matches a substring)."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import quote

from llmgateway.store.key_page import Sort
from tests.integration.test_console_keys import ALL, OPENAI, Site, assert_no_secret, site

__all__ = ["site"]


async def every_page(site: Site, start: str) -> list[str]:
    shown, path = [], start
    while True:
        status, html = await site.get(path)
        assert status == 200
        shown.append(html)
        found = re.search(r'<a href="/admin(/keys\?[^"]*)"[^>]*>Next →', html)
        if found is None:
            return shown
        path = unescape(found.group(1))


async def test_no_page_holds_a_full_key(site: Site) -> None:
    pages: list[str] = []
    for sort in Sort:
        for direction in ("asc", "desc"):
            pages += await every_page(site, f"/keys?sort={sort.value}&dir={direction}&size=25")
    _, fragment = await site.get("/keys?size=200", **{"HX-Request": "true"})
    pages.append(fragment)
    _, row = await site.post("/keys/1/recheck", {"model": "gpt-a"}, **{"HX-Request": "true"})
    pages.append(row)
    for key in (OPENAI[3], OPENAI[3][:-4], OPENAI[3][4:]):
        for field in ("q", "model", "provider", "code", "state", "after"):
            status, html = await site.get(f"/keys?{field}={quote(key)}")
            assert status in (200, 400)
            pages.append(html)
    assert len(pages) > 20
    for html in pages:
        assert_no_secret(html)
    assert all(key[:-4] not in "".join(pages) for key in ALL)
