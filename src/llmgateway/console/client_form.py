"""The clients page's forms read into what `llmgateway clients` options give: each field
bounded in size and refused with a message when it is not what the CLI would take (a field
left out is an option not given; a blank one clears the rule), then parsed by the CLI's own
`client_edits.rule_changes`. The body itself is bounded (`read_form`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from llmgateway.client_edits import RULE_OPTIONS, RuleError, rule_changes
from llmgateway.core.clients import TOKEN_PREFIX, Period, parse_span

MAX_FORM_BYTES = 16_384
"""A clients form's body is refused beyond this (413)."""
TEXT_LIMITS = {
    "name": 64,
    "routes": 1000,
    "providers": 1000,
    "models": 1000,
    "expires": 40,
    "allow_ip": 2000,
    "notes": 500,
    "grace": 12,
    "confirm": 64,
}
"""The longest value of each text field."""
COUNTS = ("rpm", "tpm", "max_parallel", "quota")
"""The whole-number fields (blank or 0: unlimited, or no quota)."""
MAX_COUNT = 10**12
MAX_ITEMS = 64
"""The most globs or address ranges one field may list."""
_SPLIT = re.compile(r"[\s,]+")

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]


async def read_form(request: web.Request) -> Form:
    """The posted form, its body at most `MAX_FORM_BYTES` (413 beyond; 411 without a length)."""
    length = request.content_length
    if length is None:
        raise web.HTTPLengthRequired(text="a form with a Content-Length")
    if length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, length)
    return await request.post()


@dataclass(frozen=True, slots=True)
class Fields:
    """A form's fields as typed (to show the form again) and the problems found in them."""

    typed: dict[str, str]
    problems: list[str]

    def text(self, form: Form, name: str) -> str | None:
        """Field `name` (None: absent; a problem when too long, a file or not one line)."""
        value = form.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problems.append(f"{name}: not a text field")
            return None
        if len(value) > TEXT_LIMITS.get(name, 12):
            self.problems.append(f"{name}: at most {TEXT_LIMITS.get(name, 12)} characters")
            return None
        if not value.isprintable():
            self.problems.append(f"{name}: one line of printable text")
            return None
        self.typed[name] = value
        return value.strip()


def _count(fields: Fields, form: Form, name: str) -> int | None:
    text = fields.text(form, name)
    if text is None:
        return None
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_COUNT:
        fields.problems.append(f"{name}: a whole number from 0 to {MAX_COUNT} (0: none)")
        return None
    return int(text)


def _listed(fields: Fields, name: str, text: str) -> tuple[str, ...]:
    items = tuple(item for item in _SPLIT.split(text) if item)
    if len(items) > MAX_ITEMS:
        fields.problems.append(f"{name}: at most {MAX_ITEMS} entries")
    return items


def given_of(form: Form) -> tuple[dict[str, Any], Fields]:
    """The options the form gives, as `clients create`/`update` take them, and its fields."""
    fields = Fields({}, [])
    given: dict[str, Any] = dict.fromkeys(RULE_OPTIONS)
    for name in ("routes", "providers", "models"):
        text = fields.text(form, name)
        given[name] = None if text is None else ",".join(_listed(fields, name, text))
    for name in COUNTS:
        given[name] = _count(fields, form, name)
    period = fields.text(form, "period")
    if period and period not in {p.value for p in Period}:
        fields.problems.append(f"period: one of {', '.join(p.value for p in Period)}")
    given["period"] = period or None
    expires = fields.text(form, "expires")
    given["expires"] = None if expires is None else (expires or "never")
    ranges = fields.text(form, "allow_ip")
    if ranges is not None:  # blank: any address, as `--allow-ip any`
        given["allow_ip"] = _listed(fields, "allow_ip", ranges) or ("any",)
    notes = fields.text(form, "notes")
    if notes is not None and TOKEN_PREFIX in notes:  # shown to every console user: no secret
        fields.problems.append("notes: no client token here")
        fields.typed.pop("notes")
        notes = None
    given["notes"] = notes
    return given, fields


def changes_of(form: Form, now: float, *, new: bool = False) -> tuple[dict[str, object], Fields]:
    """The rule columns the form sets (every one for a `new` client) and its fields; the
    columns are empty when a field has a problem."""
    given, fields = given_of(form)
    if fields.problems:
        return {}, fields
    try:
        return rule_changes(given, now, new=new), fields
    except RuleError as error:
        fields.problems.append(f"{error.option.lstrip('-').replace('-', '_')}: {error}")
        return {}, fields


def grace_of(form: Form) -> tuple[float | None, Fields]:
    """The rotation's grace in seconds (None: a problem, in the fields)."""
    fields = Fields({}, [])
    text = fields.text(form, "grace")
    if fields.problems:
        return None, fields
    span = parse_span(text or "0h")
    if span is None:
        fields.problems.append(f"grace: {text!r} is not a span such as 24h, 2d or 1w")
    return span, fields


def shown_form(view: Mapping[str, Any]) -> dict[str, str]:
    """A client's view (`client_views.stored_view`) as the form's fields show it."""

    def shown(value: object) -> str:
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        return "" if value is None else str(value)

    names = {"allow_ip": "allow_ips", "expires": "expires_at"}
    return {field: shown(view.get(names.get(field, field))) for field in (*RULE_OPTIONS,)}
