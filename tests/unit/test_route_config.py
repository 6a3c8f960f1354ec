"""Routes and gateway-wide tokens in the config: defaults, every rejection through the real
loader (with the YAML path, a hint, and no token shown), the route table the request path
uses, and what `check-config` prints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings
from llmgateway.config.problems import ConfigError, Problem
from llmgateway.config.reachable import unused_aliases
from llmgateway.config.route_table import route_table, token_digest
from llmgateway.core.routes import (
    DEFAULT_FALLBACK_ON,
    NotFound,
    ProviderHit,
    RouteHit,
    StreamCommit,
    Target,
    resolve_model,
)
from llmgateway.observe.logs import known_secrets

GEMINI_TOKEN = "tok-gemini-aaaaaaaaaaaaaaaa"
OPENAI_TOKEN = "tok-openai-bbbbbbbbbbbbbbbb"
APP_TOKEN = "tok-app-cccccccccccccccccccc"
CI_TOKEN = "tok-ci-dddddddddddddddddddddd"

BASE: dict[str, Any] = {
    "gateway": {
        "tokens": [
            {"name": "app", "token": APP_TOKEN},
            {"name": "ci", "token": CI_TOKEN, "routes": ["long*"], "providers": ["gem*"]},
        ]
    },
    "providers": {
        "gemini": {
            "provider_type": "gemini",
            "keys_path": "keys/gemini",
            "api_base_url": "https://generativelanguage.googleapis.com",
            "default_model": "gemini-2.5-flash",
            "models": {
                "gemini-2.5-flash": {"endpoint_suffix": ":generateContent"},
                "gemini-2.5-pro": {"endpoint_suffix": ":generateContent"},
            },
            "access_control": {"gateway_access_token": GEMINI_TOKEN},
        },
        "openai": {
            "provider_type": "openai_like",
            "keys_path": "keys/openai",
            "api_base_url": "https://api.openai.com/v1",
            "default_model": "gpt-4o-mini",
            "shared_key_status": True,
            "models": {
                "gpt-4o-mini": {"endpoint_suffix": "/chat/completions"},
                "gpt-4.1*": {"endpoint_suffix": "/chat/completions"},
            },
            "access_control": {"gateway_access_token": OPENAI_TOKEN},
        },
    },
    "routes": {
        "fast": {
            "targets": [
                {"provider": "gemini", "model": "gemini-2.5-flash", "weight": 3},
                {"provider": "openai", "model": "gpt-4o-mini"},
                {"provider": "openai", "model": "gpt-4.1-mini", "priority": 1},
            ],
            "context_length_fallback": "long",
        },
        "long": {"targets": [{"provider": "gemini", "model": "gemini-2.5-pro"}]},
        "cheap": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    },
}


def config(**changes: Any) -> dict[str, Any]:
    """BASE with `changes` (`a__b=x` sets a.b; a value of None removes the setting)."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def problems(tmp_path: Path, data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, data), environ={})
    for problem in caught.value.problems:
        for token in (GEMINI_TOKEN, OPENAI_TOKEN, APP_TOKEN, CI_TOKEN):
            assert token not in str(problem)
    return list(caught.value.problems)


def only(tmp_path: Path, data: dict[str, Any]) -> Problem:
    found = problems(tmp_path, data)
    assert len(found) == 1, found
    return found[0]


# -- valid routes --------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), environ={})
    long = settings.routes["long"]
    assert long.targets[0].weight == 1
    assert long.targets[0].priority == 0
    assert set(long.fallback_on) == DEFAULT_FALLBACK_ON
    assert long.fallback_on_status == ()
    assert long.attempts_per_target is None
    assert long.max_targets == 3
    assert long.context_length_fallback is None
    assert long.stream_commit is StreamCommit.FIRST_EVENT
    assert long.peek_timeout_sec == 10
    assert long.headers is True
    app = settings.gateway.tokens[0]
    assert (app.routes, app.providers) == (("*",), ())
    assert APP_TOKEN not in repr(settings)


def test_the_route_table_tiers_targets_and_keeps_each_surface_to_what_it_serves(
    tmp_path: Path,
) -> None:
    table = route_table(load_settings(write(tmp_path, BASE), environ={}))
    fast = table.route("openai", "fast")
    assert fast is not None
    assert fast.tiers == (
        (Target("gemini", "gemini-2.5-flash", 3.0), Target("openai", "gpt-4o-mini")),
        (Target("openai", "gpt-4.1-mini", priority=1),),
    )
    assert fast.context_length_fallback == "long"
    native = table.route("gemini", "fast")
    assert native is not None
    assert native.targets == (Target("gemini", "gemini-2.5-flash", 3.0),)
    assert table.route("gemini", "cheap") is None  # only an openai_like target
    assert table.grants_of(token_digest(GEMINI_TOKEN)) is None  # a provider's: not a gateway token
    assert APP_TOKEN not in repr(table)


def test_tokens_reach_what_their_globs_match(tmp_path: Path) -> None:
    table = route_table(load_settings(write(tmp_path, BASE), environ={}))
    app, ci = table.grants_of(token_digest(APP_TOKEN)), table.grants_of(token_digest(CI_TOKEN))
    assert app is not None
    assert ci is not None
    assert (app.name, ci.name) == ("app", "ci")
    assert set(app.on("openai").routes) == {"fast", "long", "cheap"}
    assert set(app.on("gemini").routes) == {"fast", "long"}
    assert app.on("openai").providers == frozenset()
    assert set(ci.on("openai").routes) == {"long"}
    assert ci.on("openai").providers == ci.on("gemini").providers == {"gemini"}
    assert resolve_model("cheap", ci.on("openai")) == NotFound("cheap")
    assert resolve_model("gemini/gemini-2.5-pro", ci.on("gemini")) == ProviderHit(
        "gemini", "gemini-2.5-pro"
    )
    hit = resolve_model("fast", app.on("gemini"))
    assert isinstance(hit, RouteHit)
    assert hit.route.targets[0].provider == "gemini"


def test_a_disabled_provider_leaves_its_targets_out(tmp_path: Path) -> None:
    data = config(providers__openai__enabled=False, routes__cheap=None)
    table = route_table(load_settings(write(tmp_path, data), environ={}))
    fast = table.route("openai", "fast")
    assert fast is not None
    assert [t.provider for t in fast.targets] == ["gemini"]


def test_an_alias_only_a_context_length_fallback_reaches_needs_no_token(tmp_path: Path) -> None:
    data = config(gateway__tokens__1__routes=["cheap"], gateway__tokens__0__routes=["fast"])
    settings = load_settings(write(tmp_path, data), environ={})
    assert "long" in settings.routes


# -- rejections ----------------------------------------------------------------------------------


def test_an_alias_named_like_a_provider(tmp_path: Path) -> None:
    data = config(routes__openai={"targets": [{"provider": "gemini", "model": "gemini-2.5-pro"}]})
    assert only(tmp_path, data) == Problem(
        "routes.openai",
        "the alias 'openai' is also a provider's name",
        "rename the route: an alias and a provider must not share a name",
    )


def test_an_alias_hiding_provider_addressing(tmp_path: Path) -> None:
    route = {"targets": [{"provider": "gemini", "model": "gemini-2.5-pro"}]}
    data = config(**{"routes__openai/gpt-4o-mini": route})
    assert only(tmp_path, data) == Problem(
        "routes.openai/gpt-4o-mini",
        "the alias 'openai/gpt-4o-mini' hides model 'gpt-4o-mini' of provider 'openai' (a "
        "client naming 'openai/gpt-4o-mini' would get the route)",
        "rename the route: <provider>/<model> names a provider's model",
    )


def test_an_alias_no_token_may_use_is_a_warning(tmp_path: Path) -> None:
    # clients stored with `llmgateway clients` may use it: the config alone cannot tell
    data = config(gateway__tokens__0__routes=["fast", "long"], gateway__tokens__1__routes=[])
    settings = load_settings(write(tmp_path, data), environ={})
    assert unused_aliases(settings) == [
        (
            "routes.cheap",
            "no gateway.tokens entry may use this alias: only clients made with "
            "`llmgateway clients create --routes` can",
        )
    ]
    result = CliRunner().invoke(main, ["check-config", str(write(tmp_path, data))])
    assert result.exit_code == 0, result.output
    assert "warning: routes.cheap: no gateway.tokens entry may use this alias" in result.output


def test_routes_without_gateway_tokens(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, config(gateway=None)), environ={})
    found = [where for where, _ in unused_aliases(settings)]
    assert found == ["routes.fast", "routes.cheap"]  # long: fast's fallback


def test_an_unknown_provider(tmp_path: Path) -> None:
    data = config(routes__fast__targets__1__provider="opneai")
    assert only(tmp_path, data) == Problem(
        "routes.fast.targets.1.provider",
        "unknown provider 'opneai'",
        "configured providers: gemini, openai",
    )


def test_a_model_the_provider_does_not_serve(tmp_path: Path) -> None:
    data = config(routes__fast__targets__0__model="gemini-3-ultra")
    assert only(tmp_path, data) == Problem(
        "routes.fast.targets.0.model",
        "'gemini-3-ultra' is not one of provider 'gemini''s models",
        "add it to providers.gemini.models, or use one of: gemini-2.5-flash, gemini-2.5-pro",
    )


def test_a_model_a_pattern_serves_is_fine(tmp_path: Path) -> None:
    data = config(routes__cheap__targets=[{"provider": "openai", "model": "gpt-4.1-nano"}])
    assert load_settings(write(tmp_path, data), environ={}).routes["cheap"]


def test_the_same_target_twice(tmp_path: Path) -> None:
    target = {"provider": "gemini", "model": "gemini-2.5-pro", "weight": 2}
    data = config(routes__long__targets=[target, {**target, "priority": 1}])
    assert only(tmp_path, data) == Problem(
        "routes.long.targets.1",
        "the same target as targets.0 (gemini, gemini-2.5-pro)",
        "a request tries each target at most once; to send it more traffic, raise its weight",
    )


def test_no_target_any_surface_can_serve(tmp_path: Path) -> None:
    data = config(providers__openai__enabled=False)
    assert only(tmp_path, data) == Problem(
        "routes.cheap.targets",
        "no surface can serve any target: every target's provider is unknown or disabled",
        "enable one of its providers, or remove the route",
    )


def test_no_targets(tmp_path: Path) -> None:
    problem = only(tmp_path, config(routes__long__targets=[]))
    assert (problem.path, problem.message) == ("routes.long.targets", "must not be empty")


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"routes__fast__context_length_fallback": "fast"}, "routes.fast"),
        ({"routes__long__context_length_fallback": "fast"}, "routes.fast"),
        (
            {
                "routes__long__context_length_fallback": "cheap",
                "routes__cheap__context_length_fallback": "long",
            },
            "routes.long",
        ),
    ],
)
def test_context_length_fallbacks_must_not_loop(
    tmp_path: Path, changes: dict[str, Any], path: str
) -> None:
    problem = only(tmp_path, config(**changes))
    assert problem.path == f"{path}.context_length_fallback"
    assert problem.message.startswith("context-length fallbacks loop: ")
    assert problem.hint == "end the chain at a route with no context_length_fallback"


def test_a_loop_is_named_in_full(tmp_path: Path) -> None:
    data = config(
        routes__long__context_length_fallback="cheap", routes__cheap__context_length_fallback="long"
    )
    assert only(tmp_path, data).message == "context-length fallbacks loop: long → cheap → long"


def test_a_context_length_fallback_naming_no_route(tmp_path: Path) -> None:
    assert only(tmp_path, config(routes__fast__context_length_fallback="longer")) == Problem(
        "routes.fast.context_length_fallback",
        "'longer' is not a route alias",
        "configured route aliases: fast, long, cheap",
    )


def test_a_client_fault_is_no_fallback_reason(tmp_path: Path) -> None:
    problem = only(tmp_path, config(routes__fast__fallback_on=["rate_limited", "bad_request"]))
    assert problem.path == "routes.fast.fallback_on.1"
    assert problem.message == "'bad_request' is not allowed"
    assert "no_healthy_key" in problem.hint


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_a_client_fault_status_never_falls_back(tmp_path: Path, status: int) -> None:
    problem = only(tmp_path, config(routes__fast__fallback_on_status=[402, status]))
    assert problem.path == "routes.fast.fallback_on_status"
    assert problem.message == (
        f"{status} is the request's own fault, and a client fault never falls back (it would "
        "fail the same way on every target)"
    )


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("peek_timeout_sec", 121, "must be at most 120, got 121"),
        ("peek_timeout_sec", 0, "must be greater than 0, got 0"),
        ("max_targets", 0, "must be at least 1, got 0"),
        ("attempts_per_target", 0, "must be at least 1, got 0"),
        ("stream_commit", "first_token", "'first_token' is not allowed"),
    ],
)
def test_bounds(tmp_path: Path, setting: str, value: object, message: str) -> None:
    problem = only(tmp_path, config(**{f"routes__fast__{setting}": value}))
    assert (problem.path, problem.message) == (f"routes.fast.{setting}", message)


def test_a_weight_must_be_positive(tmp_path: Path) -> None:
    problem = only(tmp_path, config(routes__fast__targets__0__weight=0))
    assert (problem.path, problem.message) == (
        "routes.fast.targets.0.weight",
        "must be greater than 0, got 0",
    )


def test_an_unknown_route_setting_names_the_closest(tmp_path: Path) -> None:
    problem = only(tmp_path, config(routes__fast__max_target=2))
    assert problem == Problem(
        "routes.fast.max_target", "unknown setting", "did you mean 'max_targets'?"
    )


# -- token rejections ----------------------------------------------------------------------------


def test_token_names_are_unique(tmp_path: Path) -> None:
    assert only(tmp_path, config(gateway__tokens__1__name="app")) == Problem(
        "gateway.tokens.1.name",
        "'app' is already the name of gateway.tokens.0",
        "give each token its own name: logs and metrics tell clients apart by it",
    )


@pytest.mark.parametrize(
    ("token", "owner"),
    [
        (APP_TOKEN, "gateway.tokens.0.token"),
        (OPENAI_TOKEN, "providers.openai.access_control.gateway_access_token"),
    ],
)
def test_a_token_used_twice_is_named_by_where_not_shown(
    tmp_path: Path, token: str, owner: str
) -> None:
    assert only(tmp_path, config(gateway__tokens__1__token=token)) == Problem(
        "gateway.tokens.1.token",
        f"the same token as {owner}",
        "a token decides what its client may use: give each its own",
    )


def test_a_token_in_a_providers_list_clashes_too(tmp_path: Path) -> None:
    data = config(providers__gemini__access_control__gateway_access_tokens=["x" * 20, CI_TOKEN])
    assert only(tmp_path, data).message == (
        "the same token as providers.gemini.access_control.gateway_access_tokens.1"
    )


def test_a_disabled_providers_token_does_not_clash(tmp_path: Path) -> None:
    data = config(gateway__tokens__1__token=OPENAI_TOKEN, providers__openai__enabled=False)
    data["routes"]["fast"]["targets"] = data["routes"]["fast"]["targets"][:1]
    del data["routes"]["cheap"]
    assert load_settings(write(tmp_path, data), environ={}).gateway.tokens[1].name == "ci"


def test_a_blank_token(tmp_path: Path) -> None:
    assert only(tmp_path, config(gateway__tokens__1__token="  ")) == Problem(
        "gateway.tokens.1.token", "a blank token", "set a long random token, e.g. ${MY_TOKEN}"
    )


def test_a_token_naming_an_unknown_provider(tmp_path: Path) -> None:
    data = config(gateway__tokens__1__providers=["gem*", "deepseek"])
    assert only(tmp_path, data) == Problem(
        "gateway.tokens.1.providers.1",
        "'deepseek' is not a configured provider",
        "configured providers: gemini, openai",
    )


@pytest.mark.parametrize("name", ["ci bot", "", "-ci", "x" * 65, "ci/bot"])
def test_a_token_name_is_a_plain_label(tmp_path: Path, name: str) -> None:
    assert only(tmp_path, config(gateway__tokens__1__name=name)) == Problem(
        "gateway.tokens.1.name",
        "a token's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
        "digit",
        "e.g. ci-bot: logs and metrics show it",
    )


def test_names_under_tokens_are_not_masked_as_secrets(tmp_path: Path) -> None:
    """`gateway.tokens` holds secrets, but a message naming a route, a provider or a token's
    name (all written under it too) shows them as they are."""
    data = config(
        gateway__tokens__0__name="frontend",
        gateway__tokens__1__name="frontend",
        gateway__tokens__1__routes=["fast"],
        gateway__tokens__1__providers=["gemini", "opneai"],
    )
    assert [str(p) for p in problems(tmp_path, data)] == [
        "gateway.tokens.1.name: 'frontend' is already the name of gateway.tokens.0 (give each "
        "token its own name: logs and metrics tell clients apart by it)",
        "gateway.tokens.1.providers.1: 'opneai' is not a configured provider (configured "
        "providers: gemini, openai)",
    ]


def test_route_problems_are_found_beside_other_problems(tmp_path: Path) -> None:
    data = config(gateway__port="eighty", routes__fast__targets__1__provider="nope")
    data["providers"]["openai"]["timeouts"] = {"conect": 3}
    paths = [p.path for p in problems(tmp_path, data)]
    assert paths == [
        "gateway.port",
        "providers.openai.timeouts.conect",
        "routes.fast.targets.1.provider",
    ]


def test_a_broken_provider_is_not_also_an_unknown_one(tmp_path: Path) -> None:
    data = config(
        providers__openai__api_base_url="ftp://example", gateway__tokens__1__providers=["openai"]
    )
    assert [p.path for p in problems(tmp_path, data)] == ["providers.openai.api_base_url"]


# -- check-config --------------------------------------------------------------------------------


def test_check_config_sums_up_routes_and_warns_of_weak_gateway_tokens(tmp_path: Path) -> None:
    data = config(gateway__tokens__1__token="change-me-ci")
    result = CliRunner().invoke(main, ["check-config", str(write(tmp_path, data))], env={})
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "ok: 2 providers (gemini, openai), 3 routes (fast, long, cheap), 2 gateway tokens "
        "(app, ci), database: sqlite\n"
    )
    assert result.stderr.startswith(
        "warning: gateway.tokens.1.token: a placeholder token, refused off loopback; "
    )
    assert "change-me-ci" not in result.output


def test_check_config_lists_route_problems_with_their_paths(tmp_path: Path) -> None:
    data = config(gateway__tokens__1__token=GEMINI_TOKEN, routes__long__targets__0__model="x")
    result = CliRunner().invoke(main, ["check-config", str(write(tmp_path, data))], env={})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "gateway.tokens.1.token: the same token as "
        "providers.gemini.access_control.gateway_access_token (a token decides what its client "
        "may use: give each its own)",
        "routes.long.targets.0.model: 'x' is not one of provider 'gemini''s models (add it to "
        "providers.gemini.models, or use one of: gemini-2.5-flash, gemini-2.5-pro)",
    ]
    assert GEMINI_TOKEN not in result.output


def test_gateway_tokens_are_secrets_the_logs_mask(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), environ={})
    assert {APP_TOKEN, CI_TOKEN} <= known_secrets(settings, key_files=False)


def test_a_provider_gateway_tokens_reach_needs_no_token_of_its_own(tmp_path: Path) -> None:
    routed = config(providers__openai__access_control={})  # routes fast and cheap target it
    assert load_settings(write(tmp_path, routed), environ={}).providers["openai"]
    addressed = config(
        providers__openai__access_control={},
        routes__fast__targets=[{"provider": "gemini", "model": "gemini-2.5-flash"}],
        routes__cheap=None,
        gateway__tokens__1__providers=["gemini", "open*"],
    )
    assert load_settings(write(tmp_path, addressed), environ={}).providers["openai"]


def test_a_provider_nothing_reaches_needs_a_token(tmp_path: Path) -> None:
    data = config(
        providers__openai__access_control={},
        routes__fast__targets=[{"provider": "gemini", "model": "gemini-2.5-flash"}],
        routes__cheap=None,
    )
    assert only(tmp_path, data) == Problem(
        "providers.openai.access_control.gateway_access_token",
        "an enabled provider needs a gateway access token",
        "set gateway_access_token (e.g. ${MY_TOKEN}) or gateway_access_tokens, reach it from a "
        "route or a gateway token's providers, or set enabled: false",
    )


def test_check_config_warns_of_targets_on_disabled_providers(tmp_path: Path) -> None:
    data = config(providers__openai__enabled=False, routes__cheap=None)
    result = CliRunner().invoke(main, ["check-config", str(write(tmp_path, data))], env={})
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: routes.fast.targets.1: provider 'openai' is disabled: the route never tries "
        "this target",
        "warning: routes.fast.targets.2: provider 'openai' is disabled: the route never tries "
        "this target",
    ]
