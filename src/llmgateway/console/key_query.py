"""The keys page's query string, read and written: the filter, the sort, the page size and the
cursor, all in the URL (so a page is bookmarkable); anything malformed is reported in words,
never raised as a server error."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlencode

from llmgateway.console.key_filter import FilterForm
from llmgateway.key_filter import STATE_CHOICES
from llmgateway.records import KeyFilter
from llmgateway.store.key_page import LARGEST, SMALLEST, BadCursorError, Cursor, PageQuery, Sort

STATES = STATE_CHOICES
"""The states the filter offers."""
LONGEST = 200
"""Characters a text parameter may have."""
FILTER_FIELDS = tuple(f.name for f in fields(FilterForm))
"""The parameters of the filter (the rest are the sort and the page)."""


@dataclass(frozen=True, slots=True)
class Asked:
    """The page asked for: the query, the cursor (None: the first page), the parameters as
    given (to fill the form in again) and what was wrong with them (empty: nothing)."""

    query: PageQuery
    cursor: Cursor | None
    given: dict[str, str]
    problems: list[str] = field(default_factory=list)

    def link(self, **changed: str | None) -> str:
        """The page's query string with `changed` parameters (None: left out)."""
        params = {**self.given, **changed}
        return "?" + urlencode({k: v for k, v in params.items() if v})


def parse(params: Mapping[str, str], providers: Collection[str], models: Collection[str]) -> Asked:
    """The page `params` ask for (`providers` and `models` are the configured ones; `shared`
    is a model too); each malformed parameter is a problem (and is left out)."""
    given = {k: params.get(k, "").strip()[:LONGEST] for k in (*FILTER_FIELDS, "sort", "dir")}
    given["size"] = params.get("size", "").strip()[:LONGEST]
    problems: list[str] = []
    key_filter = _filter(given, providers, {*models, "shared"}, problems)
    sort = _choice(given, "sort", [s.value for s in Sort], Sort.KEY.value, problems)
    direction = _choice(given, "dir", ["asc", "desc"], "asc", problems)
    size = _size(given, problems)
    query = PageQuery(key_filter, Sort(sort), direction == "desc", size)
    cursor = None
    for name in ("after", "before"):
        text = params.get(name, "")
        if text and cursor is None:
            try:
                cursor = Cursor.decode(text[:2000], query.sort, query.descending)
            except BadCursorError as exc:
                problems.append(str(exc))
            else:
                if cursor.before != (name == "before"):
                    problems.append("the page link is damaged: start again from the first page")
                    cursor = None
    return Asked(query, cursor, given, problems)


def _filter(
    given: dict[str, str], providers: Collection[str], models: Collection[str], problems: list[str]
) -> KeyFilter:
    form = FilterForm(**{name: given[name] for name in FILTER_FIELDS})
    read = form.read(providers, models)
    for name, problem in read.problems.items():
        problems.append(problem)
        given[name] = ""
    return read.key_filter


def _choice(
    given: dict[str, str], name: str, allowed: list[str], default: str, problems: list[str]
) -> str:
    value = given[name]
    if not value:
        return default
    if value not in allowed:
        problems.append(f"{name} must be one of: {', '.join(a for a in allowed if a)}")
        given[name] = ""
        return default
    return value


def _size(given: dict[str, str], problems: list[str]) -> int:
    text = given["size"]
    if not text:
        return 50
    if text.isdigit() and SMALLEST <= int(text) <= LARGEST:
        return int(text)
    problems.append(f"a page has {SMALLEST} to {LARGEST} rows")
    given["size"] = ""
    return 50


def known(providers: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The provider names and every model name they configure (of `settings.providers`)."""
    return set(providers), {name for provider in providers.values() for name in provider.models}
