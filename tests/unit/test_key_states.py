"""The one vocabulary of key states: the Keeper's view (stored statuses) maps to the states a
gateway's pool gives the same keys, and metrics show both views in it."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.config.settings import OutlierDetection, Selection
from llmgateway.core.key_states import KEY_STATES, STATE_OF_STATUS, USABLE, state_of_status
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import KeyEntry
from llmgateway.observe.metrics import Metrics, store_key_counts
from llmgateway.records import StatusCount

T0 = 1_000_000.0


def test_every_status_has_a_state() -> None:
    assert set(STATE_OF_STATUS) == set(KeyStatus)
    assert set(STATE_OF_STATUS.values()) | {"ejected"} == set(KEY_STATES)
    assert {"healthy", "untested"} == USABLE


@pytest.mark.parametrize("status", list(KeyStatus))
def test_a_stored_status_puts_the_key_in_the_pool_in_its_mapped_state(status: KeyStatus) -> None:
    pool = KeyPool(
        "p",
        shared=True,
        models=("a",),
        selection=Selection.LEAST_INFLIGHT,
        outlier=OutlierDetection(),
        rng=random.Random(1),
    )
    until = T0 + 60 if status in (KeyStatus.RATE_LIMITED, KeyStatus.NO_QUOTA) else None
    pool.load([KeyEntry(1, "sk-test-0000000001", ALL_MODELS, status, until)], T0)
    assert pool.state(1, "a", T0) == state_of_status(status)


def test_a_status_written_by_a_newer_version_counts_as_untested() -> None:
    assert state_of_status("some_future_reason") == "untested"


def test_keeper_metrics_show_stored_statuses_and_the_states_they_stand_for() -> None:
    counts = [
        StatusCount("openai", "shared", "valid", 5, None),
        StatusCount("openai", "shared", "timeout", 2, None),
        StatusCount("openai", "shared", "rate_limited", 3, None),
        StatusCount("openai", "shared", "invalid_key", 1, None),
        StatusCount("openai", "shared", "no_access", 4, None),
    ]
    text = Metrics.create().exposition(store_key_counts(counts)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    statuses = {s.labels["status"]: s.value for s in families["llmgateway_keys"].samples}
    states = {s.labels["state"]: s.value for s in families["llmgateway_key_states"].samples}
    assert statuses == {
        "valid": 5,
        "timeout": 2,
        "rate_limited": 3,
        "invalid_key": 1,
        "no_access": 4,
    }
    assert states == {"healthy": 7, "cooling": 3, "invalid": 5}
