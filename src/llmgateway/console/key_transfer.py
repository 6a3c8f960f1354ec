"""Export and import on the keys page, as `llmgateway keys export|import` do them.

Export is an explicit POST of the page's filter: the keys it selects, with their secrets, are
streamed page by page (`store.key_export`) as a txt or csv download, never cached; it is the
one answer of the console holding secrets, so it is logged (counts and the filter, no secret)
and recorded in the audit log. Import appends the pasted keys that are new to a new file of
the provider's keys folder and syncs the provider (the folder stays the truth); a folder that
cannot take a file is reported, and the page shows the form disabled with the reason (found
by a write, kept a while: `console.folder_checks`)."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from llmgateway.console.auth import actor
from llmgateway.console.context import Console
from llmgateway.console.key_query import FILTER_FIELDS, known, parse
from llmgateway.key_import import FolderNotWritableError, check_writable, write_key_file
from llmgateway.keyfiles import parse_keys, read_folder, sync_provider
from llmgateway.store import audit
from llmgateway.store.key_export import export_pages

_log = logging.getLogger("llmgateway.console")

IMPORT_LIMIT = 1 << 20
"""Bytes an import may paste at most (about 20,000 keys)."""
CSV_COLUMNS = ("provider", "fingerprint", "status", "source", "key")


def routes(console: Console) -> list[web.RouteDef]:
    """The export and the import."""

    async def export(request: web.Request) -> web.StreamResponse:
        return await _export(request, console)

    async def import_keys(request: web.Request) -> web.Response:
        return await _import(request, console)

    return [
        web.post("/keys/export", export, name="keys-download"),
        web.post("/keys/import", import_keys, name="keys-add"),
    ]


def import_refusals(console: Console) -> dict[str, str]:
    """Each provider whose keys folder cannot take a new file, with the reason (as found at
    most `folder_checks.CHECK_TTL_SEC` ago)."""
    refused: dict[str, str] = {}
    now = console.clock()
    for name, provider in console.settings.providers.items():
        why = console.folders.refusal(provider.keys_path, now)
        if why is not None:
            refused[name] = why
    return refused


async def _export(request: web.Request, console: Console) -> web.StreamResponse:
    form = await request.post()
    asked = parse(
        {k: str(form.get(k, "")) for k in FILTER_FIELDS}, *known(console.settings.providers)
    )
    form_name = str(form.get("format", "txt"))
    if asked.problems or form_name not in ("txt", "csv"):
        problems = asked.problems or ["the format is txt or csv"]
        return web.Response(status=400, text="; ".join(problems))
    chosen = asked.query.key_filter
    answer = web.StreamResponse(
        headers={
            "Content-Type": "text/csv" if form_name == "csv" else "text/plain",
            "Content-Disposition": f'attachment; filename="keys.{form_name}"',
            "Cache-Control": "no-store",
        }
    )
    await answer.prepare(request)
    total = 0
    if form_name == "csv":
        await answer.write((",".join(CSV_COLUMNS) + "\n").encode())
    async for page in export_pages(console.store, chosen):
        out = io.StringIO()
        if form_name == "csv":
            csv.writer(out, lineterminator="\n").writerows(
                (k.provider, k.fingerprint, k.status, k.source or "", k.secret) for k in page
            )
        else:
            out.write("".join(f"{k.secret}\n" for k in page))
        await answer.write(out.getvalue().encode())
        total += len(page)
    await answer.write_eof()
    who = actor(request)
    described = chosen.describe() or "none"
    _log.warning(
        "exported %d keys (filter %s) from the console to %s", total, described, who.address
    )
    await audit.record(console.store, who, "export", f"filter {described}", total)
    return answer


async def _import(request: web.Request, console: Console) -> web.Response:
    if (request.content_length or 0) > IMPORT_LIMIT:
        size = request.content_length or 0
        raise web.HTTPRequestEntityTooLarge(max_size=IMPORT_LIMIT, actual_size=size)
    form = await request.post()
    provider = str(form.get("provider", ""))
    text = str(form.get("keys", ""))
    settings = console.settings.providers.get(provider)
    if settings is None:
        return web.Response(status=400, text=f"no provider {provider[:100]!r} in the config")
    if len(text.encode()) > IMPORT_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=IMPORT_LIMIT, actual_size=len(text))
    try:
        added = await asyncio.to_thread(_write, settings.keys_path, text, console.clock())
    except FolderNotWritableError as exc:
        console.folders.note(settings.keys_path, str(exc), console.clock())
        return web.Response(status=409, text=f"nothing imported: {exc}")
    if added:
        console.folders.note(settings.keys_path, None, console.clock())
        await sync_provider(console.settings, console.store, provider)
    await audit.record(console.store, actor(request), "import", provider, added)
    raise web.HTTPSeeOther("/admin/keys?" + urlencode({"provider": provider}))


def _write(folder: Path, text: str, now: float) -> int:
    """Write the keys of `text` not yet in `folder` to a new file there; how many."""
    parsed = parse_keys(text, "console")
    present = read_folder(folder, parse_keys).values
    new = [key for key in parsed.sources if key not in present]
    if not new:
        return 0
    check_writable(folder)
    header = f"{len(new)} keys imported from the web console"
    write_key_file(folder, new, header, now or time.time())
    return len(new)
