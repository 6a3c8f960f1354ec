"""What a config reload changes and what waits for a restart (`config.reload_diff`): pure, on
settings built in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmgateway.config.reload_diff import RESTART_ONLY, config_diff, restart_line
from llmgateway.config.settings import Settings
from llmgateway.testing.configs import two_providers

UPSTREAM = "http://127.0.0.1:9"


def settings(**changes: Any) -> Settings:
    document = two_providers(
        Path("/srv"), UPSTREAM, openai_token="token-a" * 3, gemini_token="token-g" * 3
    )
    for dotted, value in changes.items():
        where = document
        *parents, last = dotted.split("__")
        for name in parents:
            where = where.setdefault(name, {})
        if value is None:
            where.pop(last)
        else:
            where[last] = value
    return Settings.model_validate(document)


def test_the_same_settings_differ_in_nothing() -> None:
    diff = config_diff(settings(), settings())
    assert diff.empty
    assert diff.changed == diff.restart_only == ()
    assert restart_line(diff) is None


def test_a_token_added_is_one_live_change_named_by_its_setting() -> None:
    new = settings(providers__openai__access_control={"gateway_access_tokens": ["t" * 20]})
    diff = config_diff(settings(), new)
    assert diff.changed == ("providers.openai.access_control",)
    assert diff.live() == diff.changed
    assert diff.restart_only == ()


def test_providers_added_and_removed_are_named() -> None:
    old = settings()
    extra = dict(old.model_dump(mode="json")["providers"]["openai"], keys_path="/srv/other")
    new = settings(providers__gemini=None, providers__third=extra)
    diff = config_diff(old, new)
    assert diff.providers_added == ("third",)
    assert diff.providers_removed == ("gemini",)
    assert diff.changed == ("providers.gemini", "providers.third")
    assert diff.restart_only == ()


def test_the_listeners_the_store_and_the_log_files_wait_for_a_restart() -> None:
    new = settings(
        gateway={"port": 1234, "workers": 3, "refresh_interval_sec": 0.5},
        database={"url": "sqlite:////srv/elsewhere.db"},
        logging={"level": "DEBUG", "format": "json"},
    )
    diff = config_diff(settings(), new)
    assert diff.restart_only == (
        "database.url",
        "gateway.port",
        "gateway.workers",
        "logging.format",
    )
    assert set(diff.live()) == {"gateway.refresh_interval_sec", "logging.level"}
    line = restart_line(diff)
    assert line is not None
    assert "database.url, gateway.port, gateway.workers, logging.format" in line


def test_a_provider_setting_is_named_to_its_section_and_the_gateway_tokens_to_theirs() -> None:
    token = {"name": "team", "token": "x" * 24, "providers": ["openai"]}
    new = settings(
        providers__openai__timeouts={"read": 99.0},
        providers__gemini__gateway_policy={"serve_untested_keys": False},
        gateway={"tokens": [token]},
    )
    diff = config_diff(settings(), new)
    assert diff.changed == (
        "gateway.tokens",
        "providers.gemini.gateway_policy",
        "providers.openai.timeouts",
    )
    assert diff.restart_only == ()


def test_every_restart_only_name_is_a_setting() -> None:
    dumped = Settings.model_validate(
        two_providers(Path("/srv"), UPSTREAM, openai_token="a" * 20, gemini_token="b" * 20)
    ).model_dump()
    for name in RESTART_ONLY:
        where: Any = dumped
        for part in name.split("."):
            assert part in where, name
            where = where[part]
