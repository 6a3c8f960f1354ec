"""Config files that would cost the loader more than a config is worth: an oversized file,
YAML aliases that expand exponentially ("billion laughs"), a document that contains itself, and
nesting deep enough to exhaust the stack. Ordinary anchors and merge keys keep working."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.helpers import PROVIDER_YAML, PROVIDER_YAML_TOKEN, billion_laughs

from llmgateway.config.load import MAX_CONFIG_BYTES, load_settings
from llmgateway.config.parse import MAX_ALIAS_NODES
from llmgateway.config.problems import ConfigError, Problem


def only_problem(path: Path) -> Problem:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


def test_a_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(PROVIDER_YAML + "#" * (MAX_CONFIG_BYTES - len(PROVIDER_YAML) + 1))
    assert path.stat().st_size == MAX_CONFIG_BYTES + 1
    problem = only_problem(path)
    assert problem.path == str(path)
    assert problem.message == "the config file is larger than 1 MiB: refused unread"
    assert "check that the path names the config file" in problem.hint


def test_a_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    path.write_text(PROVIDER_YAML + "#" * (MAX_CONFIG_BYTES - len(PROVIDER_YAML) - 1) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert list(load_settings(path, environ={}).providers) == ["openai"]


def test_an_endless_file_is_read_no_further_than_the_limit() -> None:
    started = time.monotonic()
    problem = only_problem(Path("/dev/zero"))
    assert "larger than 1 MiB" in problem.message
    assert time.monotonic() - started < 5


def test_billion_laughs_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    started = time.monotonic()
    problem = only_problem(path)
    assert time.monotonic() - started < 1
    assert problem.path == str(path)
    assert problem.message.startswith("YAML aliases would expand the config by ")
    assert problem.message.endswith(f"values (at most {MAX_ALIAS_NODES:,})")
    assert "fewer nested anchors" in problem.hint


def payload_aliases(copies: int) -> str:
    """A provider whose probe payload repeats one list of 99 values `copies` times by alias."""
    values = ",".join(["x"] * 99)
    refs = "".join(f", r{n}: *many" for n in range(copies))
    return PROVIDER_YAML.replace(
        "{endpoint_suffix: /chat/completions}",
        f"{{endpoint_suffix: /chat/completions, test_payload: {{many: &many [{values}]{refs}}}}}",
    )


def test_aliases_up_to_the_bound_are_fine_and_beyond_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(payload_aliases(100))  # each alias adds the list and its 99 values: 10,000
    payload = load_settings(path, environ={}).providers["openai"].models["gpt-4o-mini"]
    assert payload.test_payload["r99"] == ["x"] * 99
    path.write_text(payload_aliases(101))
    problem = only_problem(path)
    assert (
        problem.message == "YAML aliases would expand the config by 10,100 values (at most 10,000)"
    )


def test_a_document_that_contains_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("providers: &me {again: *me}\n")
    problem = only_problem(path)
    assert problem.message == "invalid YAML: an alias refers to the value that contains it"


def test_nesting_too_deep_for_the_stack_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("gateway: " + "[" * 100_000 + "\n")
    assert only_problem(path).message == "invalid YAML: nested too deeply"


def test_anchors_and_merge_keys_keep_working(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        f"""
providers:
  team-a: &common
    provider_type: openai_like
    keys_path: keys/a
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models: &models
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    timeouts: {{connect: 3, read: 30}}
    access_control: {{gateway_access_token: {PROVIDER_YAML_TOKEN}-a}}
  team-b:
    <<: *common
    keys_path: keys/b
    models: *models
    timeouts: {{connect: 1}}
    access_control: {{gateway_access_token: {PROVIDER_YAML_TOKEN}-b}}
"""
    )
    settings = load_settings(path, environ={})
    a, b = settings.providers["team-a"], settings.providers["team-b"]
    assert (a.keys_path, b.keys_path) == (Path("keys/a"), Path("keys/b"))
    assert b.api_base_url == a.api_base_url
    assert b.models == a.models
    assert (a.timeouts.connect, a.timeouts.read) == (3, 30)
    assert (b.timeouts.connect, b.timeouts.read) == (1, 20)  # replaced whole, not merged
    assert b.access_control.gateway_access_token == f"{PROVIDER_YAML_TOKEN}-b"
