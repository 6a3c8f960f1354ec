"""examples/grafana-dashboard.json against what the processes really export: the JSON is a
dashboard Grafana can load (unique ids and refIds, panels side by side without overlap), every
expression reads only series that a real gateway's or a real Keeper's `/metrics` serves
(scraped over HTTP), the key counts of gateways and of the Keeper are read apart (a gateway is
told by `llmgateway_circuit_breaker_state`, which only a gateway exports, checked here on both
scrapes) and never summed across processes, and no panel puts two units on one axis."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    gateway_settings,
    keeper_listener,
    start_gateway,
)

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
KEY_FAMILIES = ("llmgateway_key_states", "llmgateway_keys", "llm_gateway_keys_total")
GATEWAY_MARK = "llmgateway_circuit_breaker_state"
ROLE = {
    "gateway": f"and on (job, instance) {GATEWAY_MARK}",
    "keeper": f"unless on (job, instance) {GATEWAY_MARK}",
}
UNITS = {"seconds": {"s"}, "rate": {"reqps", "ops"}, "count": {"short", "none"}}
_METRIC = re.compile(r"\b(llm_?gateway_[a-z0-9_]+)\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def series_names(text: str) -> set[str]:
    """Every series name a scrape can hold: each family's samples (`_total`, `_bucket`…)."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def measure(expr: str) -> str:
    """What an expression's values are: seconds (a quantile of a `_seconds` histogram), a
    rate per second, or a count (a gauge, or an increase over the range)."""
    if "histogram_quantile(" in expr:
        assert "_seconds_bucket" in expr, expr
        return "seconds"
    if "rate(" in expr:
        return "rate"
    return "count"


@pytest.fixture
async def scrapes(tmp_path: Path, fake: FakeUpstream) -> dict[str, str]:
    """The `/metrics` text of a real gateway (after a request) and of a real Keeper."""
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake)
    async with (
        start_gateway(settings) as gateway,
        keeper_listener(settings) as keeper,
        httpx.AsyncClient() as http,
    ):
        answer = await http.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200, answer.text
        found = {}
        for role, url in (("gateway", gateway.url), ("keeper", keeper)):
            scraped = await http.get(f"{url}/metrics", headers=METRICS_AUTH)
            assert scraped.status_code == 200, scraped.text
            found[role] = scraped.text
        return found


def test_the_dashboard_is_one_grafana_can_load() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert set(_METRIC.findall(variable["definition"])) <= {"llmgateway_requests_total"}


async def test_every_expression_reads_series_the_processes_export(
    scrapes: dict[str, str],
) -> None:
    exported = {role: series_names(text) for role, text in scrapes.items()}
    anywhere = exported["gateway"] | exported["keeper"]
    for panel in dashboard()["panels"]:
        for expr in expressions(panel):
            used = set(_METRIC.findall(expr))
            assert used, expr
            assert used <= anywhere, f"{panel['title']}: {sorted(used - anywhere)}"
            for role, selector in ROLE.items():
                if selector in expr:  # a panel of one role reads that role's series
                    assert used - {GATEWAY_MARK} <= exported[role], (panel["title"], role)


async def test_only_a_gateway_exports_the_mark_the_dashboard_tells_them_apart_by(
    scrapes: dict[str, str],
) -> None:
    def marked(text: str) -> set[str]:
        return {
            sample.labels["provider"]
            for family in text_string_to_metric_families(text)
            if family.name == GATEWAY_MARK
            for sample in family.samples
        }

    assert marked(scrapes["gateway"]) == {"openai", "gemini"}, "one per provider, always"
    assert marked(scrapes["keeper"]) == set()
    for role in ROLE:
        assert "llmgateway_key_states" in series_names(scrapes[role])


def test_key_counts_are_read_per_role_and_never_summed() -> None:
    """Every process exports key counts (each gateway its pool, every Keeper the store): a
    `sum` counts each key once per process, and the two views use different words."""
    seen = set()
    for panel in dashboard()["panels"]:
        for expr in expressions(panel):
            if not set(_METRIC.findall(expr)) & set(KEY_FAMILIES):
                continue
            assert "sum" not in expr, f"{panel['title']}: {expr}"
            assert "llmgateway_keys{" not in expr, "deprecated: llmgateway_key_states"
            assert expr.startswith("max by ("), expr
            roles = [role for role, selector in ROLE.items() if selector in expr]
            assert len(roles) == 1, f"{panel['title']}: read gateways and the Keeper apart"
            seen.add(roles[0])
    assert seen == set(ROLE), "a panel for the gateways' keys and one for the Keeper's"


def test_no_panel_mixes_units() -> None:
    for panel in dashboard()["panels"]:
        kinds = {measure(expr) for expr in expressions(panel)}
        assert len(kinds) == 1, f"{panel['title']}: {kinds} on one axis"
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in UNITS[kinds.pop()], f"{panel['title']}: unit {unit}"
        for override in panel["fieldConfig"].get("overrides", []):
            assert all(p["id"] != "unit" for p in override.get("properties", [])), panel["title"]
