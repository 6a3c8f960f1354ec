"""`read_filter`: the one reader of the keys filter (CLI options, console form and URL, jobs)."""

from __future__ import annotations

import pytest

from llmgateway.core.outcomes import KeyStatus
from llmgateway.key_filter import FilterError, read_filter
from llmgateway.records import KeyFilter


def test_every_field_read() -> None:
    read = read_filter(
        provider="openai",
        model="gpt-4o",
        states=("invalid", "no_quota", "disabled"),
        code="429",
        search="sk-…a1b2",
        providers={"openai"},
        models={"gpt-4o"},
    )
    assert read.problems == {}
    assert read.strict() == KeyFilter(
        provider="openai",
        model="gpt-4o",
        statuses=frozenset({KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS, KeyStatus.NO_QUOTA}),
        disabled=True,
        status_code=429,
        search="sk-…a1b2",
    )


def test_empty_fields_do_not_narrow() -> None:
    assert read_filter().strict() == KeyFilter()
    assert read_filter(model="shared", models=set()).strict() == KeyFilter(model="shared")


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"provider": "nobody"}, "provider"),
        ({"model": "gpt-z"}, "model"),
        ({"states": ("asleep",)}, "state"),
        ({"code": "42"}, "code"),
        ({"code": "4x9"}, "code"),
        ({"code": "600"}, "code"),
        ({"search": "sk-live-secretpart"}, "q"),
    ],
)
def test_a_bad_field_is_left_out_and_named(fields: dict[str, object], bad: str) -> None:
    read = read_filter(
        providers={"openai"},
        models={"gpt-4o"},
        **fields,  # type: ignore[arg-type]
    )
    assert list(read.problems) == [bad]
    assert read.key_filter == KeyFilter()  # the lenient reading drops it (a page shows why)
    with pytest.raises(FilterError) as raised:
        read.strict()  # an action never runs on the wider set
    for value in fields.values():
        if isinstance(value, str):
            assert value not in str(raised.value)  # a pasted secret is never shown back


def test_names_are_not_checked_without_the_config() -> None:
    assert read_filter(provider="any", model="thing").strict() == KeyFilter("any", "thing")
