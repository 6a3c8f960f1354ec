"""What `llmgateway clients` and the console's clients page share: the rule columns a set of
given options sets (one parser for both, so a value the CLI refuses the console refuses with
the same words), a new client's or a rotation's token columns (the secret returned once, only
its SHA-256 and its ends kept), whether the config declares a name (read-only), and each
client's quota spend in its current period."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmgateway.core.clients import networks, new_secret, parse_when, shown
from llmgateway.store.clients import RULE_DEFAULTS

if TYPE_CHECKING:
    from llmgateway.config.route_settings import GatewayToken
    from llmgateway.config.settings import Settings
    from llmgateway.store import Store
    from llmgateway.store.clients import ClientRecord

NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
"""What a client's name may be, as the refusals say it."""
RULE_OPTIONS = (
    "routes",
    "providers",
    "models",
    "rpm",
    "tpm",
    "max_parallel",
    "quota",
    "period",
    "expires",
    "allow_ip",
    "notes",
)
"""The options that set a client's rules (`clients create`/`update`; the console's form)."""


class RuleError(ValueError):
    """A given option's value is refused; `option` names it as the CLI spells it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def globs(text: str) -> tuple[str, ...]:
    """A comma-separated list of globs (blanks dropped)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def rule_changes(given: Mapping[str, Any], now: float, *, new: bool = False) -> dict[str, object]:
    """The rule columns the options `given` set (each None: not given; `allow_ip` a tuple,
    empty: not given, `("any",)`: any address); for a `new` client, every rule column (the
    defaults where no option is given). RuleError on a bad expiry or address range."""
    values: dict[str, object] = dict(RULE_DEFAULTS) if new else {}
    for column in ("routes", "providers", "models"):
        if given[column] is not None:
            values[column] = globs(given[column])
    for column in ("rpm", "tpm", "max_parallel"):
        if given[column] is not None:
            values[column] = given[column] or None
    if given["quota"] is not None:
        values["quota_tokens"] = given["quota"] or None
        values["quota_period"] = (given["period"] or "month") if given["quota"] else None
    elif given["period"] is not None:
        values["quota_period"] = given["period"]
    if given["expires"] is not None:
        text = given["expires"]
        when = None if text == "never" else parse_when(text, now)
        if when is None and text != "never":
            raise RuleError("--expires", f"{text!r}: not a date, time or span")
        values["expires_at"] = when
    if given["allow_ip"]:
        ranges = () if tuple(given["allow_ip"]) == ("any",) else tuple(given["allow_ip"])
        try:
            networks(ranges)
        except ValueError as exc:
            raise RuleError("--allow-ip", str(exc)) from None
        values["allow_ips"] = ranges
    if given["notes"] is not None:
        values["notes"] = given["notes"]
    return values


def token_columns(secret: str) -> dict[str, object]:
    """The columns that hold a new token (`create`, `rotate`): its SHA-256 and its ends."""
    prefix, last4 = shown(secret)
    return {
        "token_sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "prefix": prefix,
        "last4": last4,
    }


def new_client(name: str, rules: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """A new client's secret (to show once) and its columns, with `rules` (every rule column:
    `rule_changes(..., new=True)`)."""
    secret = new_secret()
    values: dict[str, object] = {
        "name": name,
        **token_columns(secret),
        "previous_sha256": None,
        "previous_until": None,
        **rules,
    }
    return secret, values


def rotation(found: ClientRecord, grace: float, now: float) -> tuple[str, dict[str, object]]:
    """A new secret for client `found` (to show once) and the columns that hold it; the old
    token stays valid for `grace` seconds (none when 0)."""
    secret = new_secret()
    values: dict[str, object] = {
        **token_columns(secret),
        "previous_sha256": found.token_sha256 if grace > 0 else None,
        "previous_until": now + grace if grace > 0 else None,
    }
    return secret, values


def config_token(settings: Settings, name: str) -> GatewayToken | None:
    """The `gateway.tokens` entry named `name` (read-only outside the file), or None."""
    return next((t for t in settings.gateway.tokens if t.name == name), None)


def read_only(name: str, action: str) -> str:
    """Why config client `name` cannot be changed here (`action`: change, remove, ...)."""
    return (
        f"client {name!r} is declared in the config file (gateway.tokens): it is read-only "
        f"here; {action} it there and run `llmgateway reload`"
    )


async def add_spend(
    store: Store, settings: Settings, views: list[dict[str, Any]], now: float
) -> None:
    """Each view's quota spend in its current period (`spent`), as the store holds it (a
    gateway writes its counts every few seconds)."""
    from llmgateway.client_views import with_spend
    from llmgateway.core.quota import period_starts
    from llmgateway.store.token_usage import period_sums

    names = [view["name"] for view in views if view["quota"] is not None]
    starts = period_starts(now, settings.usage.zone())
    with_spend(views, await period_sums(store, starts, names) if names else {})
