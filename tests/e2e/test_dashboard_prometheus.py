"""examples/grafana-dashboard.json evaluated by a real Prometheus that scrapes two real
gateways and a real Keeper on loopback, all in one scrape job (so nothing rests on job names):
every panel's expressions run (as Grafana sends them, its variables filled in), the panels of
the gateways' traffic have data, the gateways' key panel is the largest count of the two
gateways' pools (not their sum, not the Keeper's view), and the Keeper's key panel is the
Keeper's counts alone (no `ejected`, which only a gateway's pool knows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.config.settings import DatabaseSettings
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import (
    METRICS_AUTH,
    METRICS_TOKEN,
    OPENAI_TOKEN,
    eventually,
    gateway_settings,
    keeper_listener,
    start_gateway,
)
from tests.prometheus import Prometheus, require_prometheus, running_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
GOOD = "sk-good-openai-000000000001"
FAILING = "sk-prom-failing-00000000001"  # answers 500: ejected by the gateway that meets it
GRAFANA = {"$provider": ".*", "$__rate_interval": "5s", "$__range": "1m"}
POLICY = {
    "retry": {"enabled": True, "on_server_error": {"attempts": 3, "backoff_sec": 0.0}},
    "outlier_detection": {
        "consecutive_failures": 1,
        "base_ejection_sec": 600,
        "max_ejection_sec": 600,
    },
}

Counts = dict[tuple[str, str, str], float]


def panels() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return loaded


def as_grafana_sends(expr: str) -> str:
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    return expr


def key_panel(title: str) -> str:
    [panel] = [p for p in panels() if p["title"].startswith(title)]
    [target] = panel["targets"]
    return as_grafana_sends(target["expr"])


def states(text: str) -> Counts:
    for family in text_string_to_metric_families(text):
        if family.name == "llmgateway_key_states":
            return {
                (s.labels["provider"], s.labels["model"], s.labels["state"]): s.value
                for s in family.samples
            }
    raise AssertionError("no llmgateway_key_states")


def by_labels(result: list[dict[str, Any]]) -> Counts:
    return {
        (r["metric"]["provider"], r["metric"]["model"], r["metric"]["state"]): float(r["value"][1])
        for r in result
    }


def largest(*views: Counts) -> Counts:
    found: Counts = {}
    for view in views:
        for labels, count in view.items():
            found[labels] = max(found.get(labels, count), count)
    return found


async def test_prometheus_reads_the_dashboard_as_meant(
    tmp_path: Path, fake: FakeUpstream, pg_database: str
) -> None:
    require_prometheus()
    fake.set_behavior(FAILING, Behavior(error_rate=1.0, error_status=500))
    write_keys(tmp_path / "keys" / "openai", [GOOD, FAILING])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake, gateway_policy=POLICY).model_copy(
        update={"database": DatabaseSettings(url=pg_database)}
    )
    async with (
        start_gateway(settings, seed=1) as first,
        start_gateway(settings, seed=2) as second,
        keeper_listener(settings) as keeper,
        httpx.AsyncClient() as http,
    ):

        async def scrape(url: str) -> str:
            answer = await http.get(f"{url}/metrics", headers=METRICS_AUTH)
            assert answer.status_code == 200
            return answer.text

        async def ejected_in_first() -> bool:
            answer = await http.post(
                f"{first.url}/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text
            return ("openai", "gpt-4o-mini", "ejected") in states(await scrape(first.url))

        await eventually(ejected_in_first, 20, step=0.0, what="the failing key ejected")
        assert ("openai", "gpt-4o-mini", "ejected") not in states(await scrape(second.url))

        targets = [u.removeprefix("http://") for u in (first.url, second.url, keeper)]
        async with running_prometheus(tmp_path / "prometheus", targets, METRICS_TOKEN) as prom:
            await every_panel_runs(prom)

            async def keys_as_meant() -> bool:
                gateways = by_labels(await prom.query(key_panel("Keys by state: gateways")))
                keeper_view = by_labels(await prom.query(key_panel("Keys by state: Keeper")))
                views = [states(await scrape(u)) for u in (first.url, second.url, keeper)]
                return gateways == largest(views[0], views[1]) and keeper_view == views[2]

            await eventually(keys_as_meant, 20, step=0.5, what="key panels = the scrapes")
            gateways = by_labels(await prom.query(key_panel("Keys by state: gateways")))
            keeper_view = by_labels(await prom.query(key_panel("Keys by state: Keeper")))
    assert gateways["openai", "gpt-4o-mini", "ejected"] == 1
    assert not [labels for labels in keeper_view if labels[2] == "ejected"]
    assert gateways["gemini", "shared", "untested"] == 1, "two gateways, one key: not summed"
    assert keeper_view["gemini", "shared", "untested"] == 1


async def every_panel_runs(prom: Prometheus) -> None:
    """Every expression is valid PromQL; every panel but the Keeper's probes and syncs (none
    here) has data once Prometheus has two scrapes of each target."""

    async def all_have_data() -> bool:
        for panel in panels():
            results = [await prom.query(as_grafana_sends(t["expr"])) for t in panel["targets"]]
            if not panel["title"].startswith("Keeper:") and not any(results):
                return False
        return True

    await eventually(all_have_data, 30, step=0.5, what="every panel with data")
