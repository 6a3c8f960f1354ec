"""The keys filter of the console: the fields of the keys page's filter form (and of its URL)
as given, read by `llmgateway.key_filter` (the one reader, which the CLI's options use too) and
written back into a query string. The keys page, its bulk actions and the jobs they submit all
take it from here."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlencode

from llmgateway.key_filter import FilterError, Read, read_filter
from llmgateway.records import KeyFilter
from llmgateway.store.key_actions import Chosen

MAX_FIELD = 200
"""The longest value of a field (a longer one is refused)."""


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
        """The `KeyFilter` of these fields; `FilterError` naming every field that is not one."""
        return self.read().strict()

    def read(
        self, providers: Collection[str] | None = None, models: Collection[str] | None = None
    ) -> Read:
        """These fields read (see `llmgateway.key_filter.read_filter`)."""
        return read_filter(
            provider=self.provider,
            model=self.model,
            states=(self.state,) if self.state else (),
            code=self.code,
            search=self.q,
            providers=providers,
            models=models,
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
