"""The console's Jinja2 environment: the packaged templates, autoescaped, strict about undefined
names, with the filters the pages use (`ago`, `when`) and `static_url`, which names a static
file with a digest of its content, so browsers may cache it for good."""

from __future__ import annotations

import hashlib
import time
from functools import cache
from pathlib import Path

import jinja2

STATIC = Path(__file__).parent / "static"
"""The vendored and own static files (htmx, CSS, JS)."""
TEMPLATES = Path(__file__).parent / "templates"


def environment() -> jinja2.Environment:
    """A fresh environment over `templates/` (HTML autoescaped, undefined names an error)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["when"] = when
    env.globals["static_url"] = static_url
    return env


def static_url(name: str) -> str:
    """The URL of static file `name`, with its content's digest (`?v=…`)."""
    return f"/admin/static/{name}?v={_digest(name)}"


@cache
def _digest(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def when(epoch: float | None) -> str:
    """An epoch time as `2026-12-06 16:40:05 UTC` (`—` for none)."""
    if epoch is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def ago(epoch: float | None, now: float) -> str:
    """How long before `now` an epoch time was (`12 s ago`, `3 min ago`, `in 2 h` when ahead;
    `—` for none)."""
    if epoch is None:
        return "—"
    delta = now - epoch
    text = _span(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"
