"""How the gateway merges store rows into its pools (no store needed: rows are given)."""

from __future__ import annotations

from collections.abc import Sequence

from llmgateway.conductor.app import Conductor
from llmgateway.conductor.status_writer import StatusWriter
from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool_keys import Lease
from llmgateway.store import KeyRow, StatusEvent

NOW = 1_800_000_000.0


def gateway() -> Conductor:
    provider = {
        "provider_type": "openai_like",
        "keys_path": "keys",
        "api_base_url": "http://127.0.0.1:9/v1",
        "default_model": "m",
        "shared_key_status": True,
        "models": {"m": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": "t-0123456789"},
    }
    built = Conductor(Settings.model_validate({"providers": {"p": provider}}), clock=lambda: NOW)
    built.build_providers()

    async def write(events: Sequence[StatusEvent]) -> None:
        del events

    built.writer = StatusWriter(write)
    return built


def row(key_id: int, status: KeyStatus) -> KeyRow:
    return KeyRow(key_id, "p", f"sk-row-{key_id:04d}-abcdefgh", ALL_MODELS, status, None, True)


def test_an_older_store_row_does_not_undo_a_finding_still_on_its_way() -> None:
    built = gateway()
    pool = built.providers["p"].pool
    built.apply_rows([row(1, KeyStatus.VALID), row(2, KeyStatus.VALID)])
    lease = pool.acquire("m", NOW, {2})
    assert isinstance(lease, Lease)
    assert lease.key_id == 1
    change = pool.release(lease, Outcome(ErrorReason.INVALID_KEY, Blame.KEY, 401), NOW)
    assert change is not None
    assert built.writer is not None
    built.writer.offer("p", change, NOW)
    built.apply_rows([row(1, KeyStatus.VALID)])  # a delta read before our write landed
    assert pool.state(1, "m", NOW) == "invalid"
    assert built.writer.holds(1, ALL_MODELS)


def test_a_store_row_applies_once_nothing_is_pending() -> None:
    built = gateway()
    pool = built.providers["p"].pool
    built.apply_rows([row(1, KeyStatus.INVALID_KEY)])
    assert pool.state(1, "m", NOW) == "invalid"
    built.apply_rows([row(1, KeyStatus.VALID)])  # the Keeper's probe passed
    assert pool.state(1, "m", NOW) == "healthy"
