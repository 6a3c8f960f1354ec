"""The `admin` section (the web console): strict validation, the rules between it and the
Keeper's listener, its token judged like the others (refused off loopback when weak, by the
commands that serve the console only) and hidden from every log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llmgateway.cli.main import main
from llmgateway.cli.tokens import admin_hosts, guard_tokens
from llmgateway.config.load import load_settings, validate
from llmgateway.config.settings import Settings
from llmgateway.config.weak_tokens import weak_tokens
from llmgateway.observe.logs import known_secrets

STRONG = "tok-admin-strong-0123456789abcdef"
PROVIDERS = {
    "openai": {
        "provider_type": "openai_like",
        "keys_path": "keys/openai",
        "api_base_url": "https://api.example.com/v1",
        "default_model": "m",
        "models": {"m": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": "tok-gateway-0123456789abcdef"},
    }
}


def problems(**sections: Any) -> list[tuple[str, str]]:
    settings, found = validate({"providers": PROVIDERS, **sections})
    assert (settings is None) == bool(found)
    return [(p.path, p.message) for p in found]


def test_the_console_is_off_by_default() -> None:
    settings = Settings.model_validate({"providers": PROVIDERS})
    assert not settings.admin.enabled
    assert admin_hosts(settings) == ()
    assert problems() == []


@pytest.mark.parametrize(
    ("admin", "worker", "expected"),
    [
        ({"token": STRONG}, {}, []),
        ({"token": STRONG, "port": 9465}, {"metrics_port": 0}, []),
        ({"token": STRONG, "port": 0, "host": "0.0.0.0"}, {}, []),
        (
            {"token": STRONG},
            {"metrics_port": 0},
            [("admin.port", "the console is served on the Keeper's metrics listener, but "
              "worker.metrics_port is 0 (off)")],
        ),
        (
            {"token": STRONG, "host": "0.0.0.0"},
            {},
            [("admin.host", "only applies with admin.port (the console's own listener)")],
        ),
        ({"token": "   "}, {}, [("admin.token", "a blank token")]),
        ({"tokn": STRONG}, {}, [("admin.tokn", "unknown setting")]),
    ],
)  # fmt: skip
def test_the_admin_rules(
    admin: dict[str, Any], worker: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    found = problems(admin=admin, worker=worker)
    assert [path for path, _ in found] == [path for path, _ in expected]
    for (_, message), (_, want) in zip(found, expected, strict=True):
        assert message.startswith(want)


def test_a_bad_port_is_refused_and_the_token_never_echoed() -> None:
    found = problems(admin={"token": STRONG, "port": 70000})
    assert [path for path, _ in found] == ["admin.port"]
    assert STRONG not in repr(found)
    settings = Settings.model_validate({"admin": {"token": STRONG}})
    assert STRONG not in repr(settings)


def test_the_admin_token_is_judged_and_hidden_from_logs() -> None:
    settings = Settings.model_validate({"providers": PROVIDERS, "admin": {"token": "short"}})
    assert ("admin.token", "a token of 5 characters, at least 16 needed") in weak_tokens(settings)
    assert "short" in known_secrets(settings, key_files=False)


def guard(settings: Settings, hosts: tuple[str, ...]) -> int:
    try:
        guard_tokens(settings, "127.0.0.1", ("127.0.0.1",), hosts)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def test_a_weak_admin_token_is_refused_off_loopback_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    weak = "change-me-admin-token"
    on = {"token": weak, "port": 9465}
    public = Settings.model_validate({"providers": PROVIDERS, "admin": {**on, "host": "0.0.0.0"}})
    assert admin_hosts(public) == ("0.0.0.0",)
    assert guard(public, admin_hosts(public)) == 2
    err = capsys.readouterr().err
    assert "admin.token: a placeholder token; it guards 0.0.0.0, which is not loopback" in err
    assert weak not in err
    local = Settings.model_validate({"providers": PROVIDERS, "admin": on})
    assert guard(local, admin_hosts(local)) == 0
    # mounted on the Keeper's listener: it guards worker.metrics_host
    mounted = Settings.model_validate(
        {"providers": PROVIDERS, "admin": {"token": weak}, "worker": {"metrics_host": "::"}}
    )
    assert admin_hosts(mounted) == ("::",)
    assert guard(mounted, admin_hosts(mounted)) == 2
    # `gateway` serves no console: its token is not judged there
    assert guard(public, ()) == 0
    allowed = public.model_copy(
        update={"gateway": public.gateway.model_copy(update={"allow_weak_tokens": True})}
    )
    assert guard(allowed, admin_hosts(allowed)) == 0


def test_check_config_reports_the_admin_problems(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "worker: {metrics_port: 0}\n"
        "admin: {token: short-admin}\n"
        "providers:\n"
        "  openai:\n"
        "    provider_type: openai_like\n"
        "    keys_path: keys/openai\n"
        "    api_base_url: https://api.example.com/v1\n"
        "    default_model: m\n"
        "    models: {m: {endpoint_suffix: /chat/completions}}\n"
        "    access_control: {gateway_access_token: tok-gateway-0123456789abcdef}\n"
    )
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "admin.port" in result.output
    assert "worker.metrics_port is 0" in result.output
    assert "short-admin" not in result.output
    config.write_text(config.read_text().replace("worker: {metrics_port: 0}\n", ""))
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    assert "warning: admin.token: a token of 11 characters" in result.output
    assert "short-admin" not in result.output
    assert load_settings(config).admin.token == "short-admin"
