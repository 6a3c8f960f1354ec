"""Per-key limits, the pure parts: exact local counting, fleet shares, the backend the config
selects, and the config rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import ManualClock

from llmgateway.cli.main import main
from llmgateway.config.rules import check
from llmgateway.config.settings import KeyLimits, LimitsBackend, Settings
from llmgateway.core.pool_keys import Lease
from llmgateway.limits import (
    KeyLimiter,
    Limits,
    LocalBackend,
    Refusal,
    backend_of,
    masked_redis_url,
)
from llmgateway.limits.counts import LocalCounts, share_of
from llmgateway.limits.outage import Outage
from llmgateway.observe.metrics import Metrics

T0 = 1_800_000_000.0


def settings(limits: dict[str, object] | None = None, **extra: object) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": "keys/openai",
        "api_base_url": "https://api.openai.com/v1",
        "default_model": "m",
        "models": {"m": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": "tok-limits-000000001"},
        "gateway_policy": {"key_limits": {"rpm": 10}},
    }
    data: dict[str, object] = {"providers": {"openai": provider}, **extra}
    if limits is not None:
        data["limits"] = limits
    return Settings.model_validate(data)


# -- LocalCounts -------------------------------------------------------------------------------


def test_max_concurrent_is_exact_and_a_release_frees_a_slot() -> None:
    counts = LocalCounts()
    assert counts.take("k", 1, 2, None, T0) is None
    assert counts.take("k", 2, 2, None, T0) is None
    assert counts.take("k", 3, 2, None, T0) == Refusal("busy", 1.0)
    assert counts.take("other", 4, 2, None, T0) is None  # slots are counted apart
    counts.give_back(1)
    counts.give_back(1)  # twice, or a token never granted: ignored
    counts.give_back(99)
    assert counts.inflight("k") == 1
    assert counts.take("k", 5, 2, None, T0) is None
    assert counts.inflight("k") == 2


def test_rpm_is_a_sliding_window_with_the_exact_wait() -> None:
    counts = LocalCounts()
    for i, at in enumerate((T0, T0 + 10, T0 + 20)):
        assert counts.take("k", i, None, 3, at) is None
        counts.give_back(i)  # rpm counts starts, not requests in flight
    assert counts.take("k", 9, None, 3, T0 + 30) == Refusal("rate", 30.0)
    assert counts.take("k", 9, None, 3, T0 + 59.5) == Refusal("rate", 0.5)
    assert counts.take("k", 9, None, 3, T0 + 60) is None  # the first left the window
    assert counts.take("k", 10, None, 3, T0 + 61) == Refusal("rate", 9.0)


def test_a_zero_share_refuses_every_request() -> None:
    counts = LocalCounts()
    assert counts.take("k", 1, 0, None, T0) == Refusal("busy", 1.0)
    assert counts.take("k", 1, None, 0, T0) == Refusal("rate", 60.0)


@given(limit=st.integers(0, 10_000), size=st.integers(1, 64))
def test_shares_add_up_to_the_limit_and_differ_by_at_most_one(limit: int, size: int) -> None:
    shares = [share_of(limit, rank, size) for rank in range(size)]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1


# -- KeyLimiter over the local backend ---------------------------------------------------------


def lease(lease_id: int, key_id: int = 1, model: str = "m") -> Lease:
    return Lease(lease_id, key_id, "sk-secret-000000000000000001", "direct", model)


async def test_limiter_counts_per_key_and_model_and_remembers_rate_refusals() -> None:
    clock = ManualClock(T0)
    backend = LocalBackend(Outage(5.0, clock))
    counted: list[int] = []
    limiter = KeyLimiter(
        "openai", KeyLimits(max_concurrent=1, rpm=2), backend, clock, lambda: counted.append(1)
    )
    assert await limiter.acquire(lease(1)) is None
    assert await limiter.acquire(lease(2)) == Refusal("busy", 1.0)
    assert await limiter.acquire(lease(3, model="other")) is None  # another model: its own
    limiter.release(lease(1))
    limiter.release(lease(2))  # refused, so never held: ignored
    assert await limiter.acquire(lease(4)) is None
    limiter.release(lease(4))
    clock.advance(1)
    assert await limiter.acquire(lease(5)) == Refusal("rate", 59.0)
    # answered from memory until the window can have freed: the backend is not asked
    backend.counts = LocalCounts()
    clock.advance(58)
    assert await limiter.acquire(lease(6)) == Refusal("rate", 1.0)
    clock.advance(1)
    assert await limiter.acquire(lease(7)) is None
    assert counted == []


# -- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "database", "chosen"),
    [
        (None, None, LimitsBackend.LOCAL),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, None, LimitsBackend.REDIS),
        (None, "postgresql://u@db:5432/gw", LimitsBackend.POSTGRES),
        ({"redis_url": "redis://r:6379"}, "postgresql://u@db:5432/gw", LimitsBackend.REDIS),
        ({"backend": "local", "redis_url": "redis://r:6379"}, None, LimitsBackend.LOCAL),
    ],
)
def test_the_backend_the_config_selects(
    limits: dict[str, object] | None, database: str | None, chosen: LimitsBackend
) -> None:
    extra = {"database": {"url": database}} if database else {}
    assert backend_of(settings(limits, **extra)) is chosen


def test_no_limiter_at_all_when_no_provider_sets_limits() -> None:
    data = settings().model_dump()
    data["providers"]["openai"]["gateway_policy"]["key_limits"] = {}
    assert Limits.create(Settings.model_validate(data), Metrics.create()) is None
    limits = Limits.create(settings(), Metrics.create())
    assert limits is not None
    assert isinstance(limits.backend, LocalBackend)
    assert limits.limiter("openai", KeyLimits()) is None
    assert limits.limiter("openai", KeyLimits(rpm=1)) is not None


def test_config_rules_name_the_backend_problems() -> None:
    redis = settings({"backend": "redis"})
    postgres = settings({"backend": "postgres"})
    assert [f[0] for f in check(redis.model_dump(mode="json"), redis)] == ["limits.redis_url"]
    assert [f[0] for f in check(postgres.model_dump(mode="json"), postgres)] == ["limits.backend"]
    fine = settings({"backend": "postgres"}, database={"url": "postgresql://u@db/gw"})
    assert check(fine.model_dump(mode="json"), fine) == []


def test_a_redis_password_is_masked_for_logs() -> None:
    url = "redis://gw:sekret-redis-password@cache.internal:6380/2"
    assert masked_redis_url(url) == "redis://gw:***@cache.internal:6380/2"
    assert masked_redis_url("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"
    assert "sekret" not in repr(settings({"redis_url": url}))


def test_check_config_says_which_backend_counts(tmp_path: Path) -> None:
    password = "sekret-redis-password-0002"
    data = settings().model_dump(mode="json", exclude_defaults=True)
    data["limits"] = {"redis_url": f"redis://gw:{password}@127.0.0.1:6379/0"}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("per-key limits counted by: redis")
    assert password not in result.output
    data["limits"] = {"backend": "redis"}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert "limits.redis_url: required when limits.backend is redis" in result.output
