"""The keys filter, read in one place: the `llmgateway keys …` options (`--provider`,
`--model`, `--status`, `--status-code`, `--search`), the console's filter form and URL, and the
bulk jobs both submit all become a `KeyFilter` through `read_filter`.

Fields: `provider`, `model` (`shared` for a provider with `shared_key_status`), `state` (a
stored status such as `invalid_key`, a state that stands for several such as `invalid`, or
`disabled`), `code` (the last HTTP status code) and `q` (a fingerprint prefix, or the last four
characters of the masked key: never a substring of the secret, see
`store.key_list.search_terms`). An empty field does not narrow.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from llmgateway.core.key_states import DISABLED, KEY_STATES, STATE_OF_STATUS
from llmgateway.core.outcomes import KeyStatus
from llmgateway.records import KeyFilter
from llmgateway.store.key_list import search_terms

GROUPS: dict[str, frozenset[KeyStatus]] = {
    state: frozenset(s for s, of in STATE_OF_STATUS.items() if of == state)
    for state in KEY_STATES
    if any(of == state for of in STATE_OF_STATUS.values())
}
"""The states that stand for several stored statuses (`invalid`: `invalid_key`, `no_access`)."""
STATE_CHOICES = tuple(sorted({s.value for s in KeyStatus} | set(GROUPS) | {DISABLED}))
"""Every value the `state` field (`--status`) takes."""


class FilterError(ValueError):
    """A filter that cannot be read; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Read:
    """A filter as read: the `KeyFilter` of its good fields, and what is wrong with each other
    field (by name; empty: nothing), which the filter leaves out."""

    key_filter: KeyFilter
    problems: dict[str, str]

    def strict(self) -> KeyFilter:
        """The filter, or `FilterError` naming every bad field: an action must never run on a
        wider set of keys than was asked for because a field was left out."""
        if self.problems:
            raise FilterError("; ".join(self.problems.values()))
        return self.key_filter


def read_filter(
    *,
    provider: str = "",
    model: str = "",
    states: Iterable[str] = (),
    code: str = "",
    search: str = "",
    providers: Collection[str] | None = None,
    models: Collection[str] | None = None,
) -> Read:
    """The filter of these fields (strings as given; `states` any of `STATE_CHOICES`, several
    widening). `providers`/`models`, when given, are the configured names a provider or model
    must be one of (`shared` is always a model). A problem never repeats the value it is
    about: a key pasted into the wrong field must not be shown back."""
    states = tuple(states)
    problems: dict[str, str] = {}
    if provider and providers is not None and provider not in providers:
        problems["provider"] = "no such provider in the config"
    if model and models is not None and model != "shared" and model not in models:
        problems["model"] = "no such model in the config (a model name, or shared)"
    statuses: set[KeyStatus] = set()
    for state in states:
        if state not in STATE_CHOICES:
            problems["state"] = f"a state is one of: {', '.join(STATE_CHOICES)}"
        elif state != DISABLED:  # not a stored status: the key's flag (`KeyFilter.disabled`)
            statuses |= GROUPS.get(state) or {KeyStatus(state)}
    status_code = None
    if code:
        if code.isdigit() and 100 <= int(code) <= 599:
            status_code = int(code)
        else:
            problems["code"] = "a status code is a number from 100 to 599"
    if search:
        try:
            search_terms(search)
        except ValueError as error:
            problems["q"] = str(error)
    key_filter = KeyFilter(
        provider=provider if provider and "provider" not in problems else None,
        model=model if model and "model" not in problems else None,
        statuses=frozenset() if "state" in problems else frozenset(statuses),
        disabled=DISABLED in states and "state" not in problems,
        status_code=status_code,
        search=search if search and "q" not in problems else None,
    )
    return Read(key_filter, problems)
