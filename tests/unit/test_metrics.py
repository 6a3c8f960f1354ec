"""The metric families, their labels and buckets, the per-request timing, and the pieces that
keep secrets out of logs (the redactor, the debug scrubbers)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.resilience import BreakerState
from llmgateway.observe import debug
from llmgateway.observe.logs import Redactor
from llmgateway.observe.metrics import OVERHEAD_BUCKETS, KeyCount, Metrics
from llmgateway.observe.metrics_http import authorized
from llmgateway.observe.provider_metrics import Tally, Timing
from llmgateway.providers.usage import Tokens

FAMILIES = {
    "llmgateway_requests": ("counter", {"provider", "model", "code"}),
    "llmgateway_request_duration_seconds": ("histogram", {"provider", "model"}),
    "llmgateway_time_to_first_byte_seconds": ("histogram", {"provider", "model"}),
    "llmgateway_overhead_seconds": ("histogram", {"provider"}),
    "llmgateway_upstream_attempts": ("counter", {"provider", "reason"}),
    "llmgateway_retries": ("counter", {"provider", "reason"}),
    "llmgateway_inflight_requests": ("gauge", {"provider"}),
    "llmgateway_keys": ("gauge", {"provider", "model", "status"}),
    "llmgateway_key_states": ("gauge", {"provider", "model", "state"}),
    "llmgateway_key_cooldowns": ("counter", {"provider", "reason"}),
    "llmgateway_circuit_breaker_state": ("gauge", {"provider"}),
    "llmgateway_probes": ("counter", {"provider", "result"}),
    "llmgateway_probe_duration_seconds": ("histogram", {"provider"}),
    "llmgateway_sync_changes": ("counter", {"provider", "kind", "change"}),
    "llmgateway_limiter_unavailable": ("counter", {"provider"}),
    "llmgateway_event_loop_tasks": ("gauge", set()),
    "llmgateway_auth_failures": ("counter", {"surface", "reason"}),
    "llmgateway_route_requests": ("counter", {"route", "outcome"}),
    "llmgateway_route_fallbacks": ("counter", {"route", "from_target", "to_target", "reason"}),
    "llmgateway_route_exhausted": ("counter", {"route", "code"}),
    "llmgateway_config_reloads": ("counter", {"outcome"}),
    "llmgateway_tokens": ("counter", {"provider", "model", "direction"}),
    "llmgateway_usage_missing": ("counter", {"provider", "model"}),
}
RATE_LIMITED = Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, status=429)
OK = Outcome(None, Blame.NONE, status=200)


def parsed(metrics: Metrics, keys: list[KeyCount] | None = None) -> dict[str, Metric]:
    text = metrics.exposition(keys or []).decode()
    # prometheus-client adds a `_created` timestamp series per counter and histogram
    families = text_string_to_metric_families(text)
    return {f.name: f for f in families if not f.name.endswith("_created")}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


def exercised() -> Metrics:
    metrics = Metrics.create()
    bound = metrics.for_provider("openai", ["gpt-4o-mini"])
    bound.finished("gpt-4o-mini", 200, Timing())
    bound.attempt(OK)
    bound.retry(RATE_LIMITED)
    bound.cooldown("rate_limited")
    bound.breaker(BreakerState.OPEN)
    bound.limiter_unavailable()
    metrics.probe("openai", "healthy", 0.2)
    metrics.sync_change("openai", "keys", "added", 3)
    metrics.auth_failed("openai", "wrong")
    metrics.config_reloads.labels(outcome="applied").inc()
    bound.tokens("gpt-4o-mini", Tokens(10, 4, 2, 1))
    bound.tokens("some-unconfigured-model", None)
    return metrics


def test_every_family_with_its_type_and_labels_and_nothing_about_keys() -> None:
    found = parsed(exercised(), [KeyCount("openai", "gpt-4o-mini", "healthy", 2, "healthy")])
    assert set(found) == set(FAMILIES)
    for name, (kind, labels) in FAMILIES.items():
        family = found[name]
        assert family.type == kind, name
        for s in family.samples:
            names = set(s.labels) - {"le"}
            assert names == labels, (name, names)


def test_latency_buckets_reach_ten_minutes() -> None:
    metrics = Metrics.create()
    metrics.for_provider("p", ["m"]).finished("m", 200, Timing(started=time.perf_counter() - 400))
    assert (
        sample(
            metrics,
            "llmgateway_request_duration_seconds_bucket",
            provider="p",
            model="m",
            le="300.0",
        )
        == 0
    )
    assert (
        sample(
            metrics,
            "llmgateway_request_duration_seconds_bucket",
            provider="p",
            model="m",
            le="600.0",
        )
        == 1
    )


def test_unknown_models_are_counted_as_other() -> None:
    metrics = Metrics.create()
    bound = metrics.for_provider("p", ["m"])
    for model in ("m", "made-up-1", "made-up-2"):
        bound.finished(model, 200, Timing())
    assert sample(metrics, "llmgateway_requests_total", provider="p", model="m", code="200") == 1
    assert (
        sample(metrics, "llmgateway_requests_total", provider="p", model="other", code="200") == 2
    )


def test_overhead_is_total_minus_upstream_wait() -> None:
    metrics = Metrics.create()
    timing = Timing(started=time.perf_counter() - 2.0, upstream=1.9)
    metrics.for_provider("p", ["m"]).finished("m", 200, timing)
    assert sample(metrics, "llmgateway_overhead_seconds_bucket", provider="p", le="0.05") == 0
    assert sample(metrics, "llmgateway_overhead_seconds_bucket", provider="p", le="0.25") == 1
    # time to first byte: the whole answer when nothing was streamed
    assert (
        sample(
            metrics,
            "llmgateway_time_to_first_byte_seconds_bucket",
            provider="p",
            model="m",
            le="1.0",
        )
        == 0
    )


def test_counters_by_reason_and_the_breaker_gauge() -> None:
    metrics = exercised()
    assert (
        sample(metrics, "llmgateway_retries_total", provider="openai", reason="rate_limited") == 1
    )
    assert (
        sample(metrics, "llmgateway_upstream_attempts_total", provider="openai", reason="ok") == 1
    )
    assert sample(metrics, "llmgateway_circuit_breaker_state", provider="openai") == 2
    assert (
        sample(
            metrics, "llmgateway_sync_changes_total", provider="openai", kind="keys", change="added"
        )
        == 3
    )


def test_bearer_check() -> None:
    assert not authorized(None, "")  # no token configured: nobody, not everybody
    assert not authorized("Bearer ", "")
    assert authorized(None, "", open_to_all=True)  # metrics.allow_unauthenticated
    assert authorized("Bearer tok-12345", "tok-12345")
    assert authorized("bearer  tok-12345 ", "tok-12345")
    assert not authorized(None, "tok-12345")
    assert not authorized("Bearer tok-1234", "tok-12345")
    assert not authorized("Basic tok-12345", "tok-12345")


def test_redactor_masks_shapes_and_known_secrets() -> None:
    redactor = Redactor(["plainsecretvalue01"])
    line = (
        "a sk-proj-abcdefghijklmnop1234 and AIzaSyA0123456789abcdefghijk, Bearer tok-abcdefgh1234"
        " ?key=whatever-secret-1 plainsecretvalue01 but not ordinary-words-here"
    )
    out = redactor.redact(line)
    for secret in (
        "sk-proj-abcdefghijklmnop1234",
        "AIzaSyA0123456789abcdefghijk",
        "tok-abcdefgh1234",
        "whatever-secret-1",
        "plainsecretvalue01",
    ):
        assert secret not in out
    assert "sk-…1234" in out
    assert "ordinary-words-here" in out
    cleaned = redactor.clean(
        {"headers": {"x": "plainsecretvalue01"}, "n": 3, "l": ["sk-abcdefghijklmnopq"]}
    )
    assert cleaned == {"headers": {"x": "pl…ue01"}, "n": 3, "l": ["sk-…nopq"]}


def test_debug_scrubbers() -> None:
    headers = {
        "Authorization": "Bearer sk-live-abcdefghijkl1234",
        "x-goog-api-key": "AIzaSecretKey000001",
        "accept": "*/*",
    }
    assert debug.scrub_headers(headers) == {
        "Authorization": "Bearer sk-…1234",
        "x-goog-api-key": "AI…0001",
        "accept": "*/*",
    }
    assert (
        debug.scrub_url("https://h/v1beta/m?alt=sse&key=AIzaSecretKey000001")
        == "https://h/v1beta/m?alt=sse&key=AI…0001"
    )
    body = b'{"k": "sk-live-abcdefghijkl1234"}' + b"x" * debug.BODY_LIMIT
    text = debug.scrub_body(body, "sk-live-abcdefghijkl1234")
    assert "sk-live-abcdefghijkl1234" not in text
    assert text.endswith("(33 more bytes)")


def test_a_tally_counts_exactly_like_prometheus_observe() -> None:
    registry = CollectorRegistry()
    ours = Histogram("ours", "tallied", buckets=OVERHEAD_BUCKETS, registry=registry)
    theirs = Histogram("theirs", "observed", buckets=OVERHEAD_BUCKETS, registry=registry)
    tally = Tally(ours)
    # on a bound (counted in that bucket), between bounds, past the last bound, zero
    for value in (0.0, 0.0001, 0.00011, 0.00025, 0.5, 600.0, 601.0, 1e9):
        tally.observe(value)
        theirs.observe(value)
    tally.flush()
    tally.flush()  # a second flush adds nothing

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for family in registry.collect()
            if family.name == name
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("ours") == samples("theirs")
    assert ("_count", {}, 8.0) in samples("ours")


def test_in_flight_requests_reach_the_gauge_at_scrape() -> None:
    metrics = Metrics.create()
    bound = metrics.for_provider("p", ["m"])
    bound.started()
    bound.started()
    bound.finished("m", 200, Timing())
    assert sample(metrics, "llmgateway_inflight_requests", provider="p") == 1
    bound.finished("m", 200, Timing())
    assert sample(metrics, "llmgateway_inflight_requests", provider="p") == 0
    assert sample(metrics, "llmgateway_requests_total", provider="p", model="m", code="200") == 2


async def test_the_event_loop_tasks_are_counted_at_scrape() -> None:
    metrics = Metrics.create()
    before = sample(metrics, "llmgateway_event_loop_tasks")
    parked = [asyncio.create_task(asyncio.sleep(60)) for _ in range(5)]
    try:
        assert sample(metrics, "llmgateway_event_loop_tasks") == before + 5
    finally:
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
    assert sample(metrics, "llmgateway_event_loop_tasks") == before


def test_redactor_learns_secrets_later_and_keeps_the_rest() -> None:
    redactor = Redactor([f"plain-secret-{i:06d}" for i in range(1000)])
    redactor.add(["joined-later-secret"])
    out = redactor.redact("plain-secret-000999 joined-later-secret plain-secret-001000 short")
    assert "plain-secret-000999" not in out
    assert "joined-later-secret" not in out
    assert "plain-secret-001000" in out  # never told: kept
    assert "short" in out
    assert len(redactor.secrets) == 1001


def test_redactor_learns_secrets_page_by_page_as_a_pool_loads() -> None:
    redactor = Redactor()
    pages = [[f"paged-secret-{i:06d}" for i in range(start, start + 500)] for start in (0, 300)]
    for page in (*pages, pages[0]):  # pages overlap, and one comes twice
        redactor.add(page)
    assert len(redactor.secrets) == 800
    out = redactor.redact("paged-secret-000000 paged-secret-000799 paged-secret-000800")
    assert out.count("paged-secret-") == 1
    assert "paged-secret-000800" in out


def test_route_requests_are_counted_at_the_flush() -> None:
    """A route's request counts reach prometheus-client when the metrics are flushed (at a
    scrape), all of them, and only once."""
    metrics = Metrics.create()
    for _ in range(3):
        metrics.routes.request("fast", "ok")
    metrics.routes.request("fast", "exhausted")

    def value(outcome: str) -> float | None:
        return metrics.registry.get_sample_value(
            "llmgateway_route_requests_total", {"route": "fast", "outcome": outcome}
        )

    assert value("ok") is None
    metrics.flush()
    assert (value("ok"), value("exhausted")) == (3, 1)
    metrics.flush()
    metrics.routes.request("fast", "ok")
    metrics.flush()
    assert (value("ok"), value("exhausted")) == (4, 1)


def test_tokens_by_direction_with_the_model_label_bounded() -> None:
    metrics = Metrics.create()
    bound = metrics.for_provider("openai", ["gpt-4o-mini"])
    bound.tokens("gpt-4o-mini", Tokens(10, 4, 2, 1))
    bound.tokens("gpt-4o-mini", Tokens(5, 6, 0, 0))
    bound.tokens("a-name-from-a-client", Tokens(1, 1, 0, 0))
    bound.tokens("a-name-from-a-client", None)
    metrics.flush()
    found = {
        (s.name, s.labels["model"], s.labels.get("direction", "")): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name in ("llmgateway_tokens_total", "llmgateway_usage_missing_total")
    }
    assert found == {
        ("llmgateway_tokens_total", "gpt-4o-mini", "input"): 15,
        ("llmgateway_tokens_total", "gpt-4o-mini", "output"): 10,
        ("llmgateway_tokens_total", "gpt-4o-mini", "cached"): 2,
        ("llmgateway_tokens_total", "gpt-4o-mini", "reasoning"): 1,
        ("llmgateway_tokens_total", "other", "input"): 1,
        ("llmgateway_tokens_total", "other", "output"): 1,
        ("llmgateway_usage_missing_total", "other", ""): 1,
    }
