"""The keys filter of the console, in one place: the fields of the keys page's filter form (and
of its URL), read into the `KeyFilter` every store query takes, and written back into a query
string. The keys page, its bulk actions and the jobs they submit all read it here.

Fields: `provider`, `model` (`shared` for a provider with `shared_key_status`), `state` (a
stored status such as `invalid_key`, or `disabled`), `code` (the last HTTP status code) and `q`
(a fingerprint prefix, or the last four characters of the masked key: never a substring of
the secret, see `store.key_list.search_terms`). An empty field does not narrow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlencode

from llmgateway.core.outcomes import KeyStatus
from llmgateway.records import KeyFilter
from llmgateway.store.key_actions import Chosen
from llmgateway.store.key_list import search_terms

DISABLED = "disabled"
"""The `state` of keys taken out by a disable."""
STATES = (*(status.value for status in KeyStatus), DISABLED)
"""Every `state` the filter takes."""
MAX_FIELD = 200
"""The longest value of a field (a longer one is refused)."""


class FilterError(ValueError):
    """A filter field that cannot be read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class FilterForm:
    """The filter as given, each field a string ('' : any), ready to be shown in the form
    again; `key_filter()` reads it."""

    provider: str = ""
    model: str = ""
    state: str = ""
    code: str = ""
    q: str = ""

    @classmethod
    def of(cls, given: Mapping[str, object]) -> FilterForm:
        """The filter fields of a query string or a form (other fields are ignored)."""
        found: dict[str, str] = {}
        for field in fields(cls):
            value = given.get(field.name, "")
            text = value.strip() if isinstance(value, str) else ""
            if len(text) > MAX_FIELD:
                raise FilterError(f"the filter field {field.name} is too long")
            found[field.name] = text
        return cls(**found)

    def key_filter(self) -> KeyFilter:
        """The `KeyFilter` of these fields; `FilterError` for a field that is not one."""
        statuses: frozenset[KeyStatus] = frozenset()
        if self.state and self.state not in STATES:
            raise FilterError(f"state is one of {', '.join(STATES)}")
        if self.state and self.state != DISABLED:
            statuses = frozenset({KeyStatus(self.state)})
        return KeyFilter(
            provider=self.provider or None,
            model=self.model or None,
            statuses=statuses,
            disabled=self.state == DISABLED,
            status_code=self._code(),
            search=self._search(),
        )

    def chosen(self) -> Chosen:
        """The keys these fields choose, as the bulk actions take them."""
        return Chosen(self.key_filter())

    @property
    def narrows(self) -> bool:
        """Whether any field is set (else the filter is every key)."""
        return any(getattr(self, field.name) for field in fields(self))

    def query(self, **more: str) -> str:
        """The set fields (and `more`) as a query string, for links that keep the filter."""
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]
        return urlencode(pairs + [(name, value) for name, value in more.items() if value])

    def _code(self) -> int | None:
        if not self.code:
            return None
        if not self.code.isdigit() or not 100 <= int(self.code) <= 599:
            raise FilterError("code is an HTTP status code, 100 to 599")
        return int(self.code)

    def _search(self) -> str | None:
        if not self.q:
            return None
        try:
            search_terms(self.q)
        except ValueError as error:
            raise FilterError(str(error)) from None
        return self.q
