"""How `llmgateway clients list` and `show` present a client: a stored one or one the config
declares, as the same JSON-ready mapping (never the token), and the table of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmgateway.core.clients import Period, iso_utc

if TYPE_CHECKING:
    from llmgateway.config.route_settings import GatewayToken
    from llmgateway.store.clients import ClientRecord


def _time(at: float | None) -> str | None:
    if at is None:
        return None
    return iso_utc(at)


def _state(enabled: bool, expires_at: float | None, now: float) -> str:
    if not enabled:
        return "disabled"
    return "expired" if expires_at is not None and now >= expires_at else "enabled"


def stored_view(record: ClientRecord, now: float) -> dict[str, Any]:
    """A stored client as `list --json` and `show --json` give it."""
    grace = record.previous_until
    return {
        "name": record.name,
        "source": "store",
        "state": _state(record.enabled, record.expires_at, now),
        "token": record.shown,
        "previous_token_until": _time(grace) if grace is not None and grace > now else None,
        "expires_at": _time(record.expires_at),
        "routes": list(record.routes),
        "providers": list(record.providers),
        "models": list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "max_parallel": record.max_parallel,
        "quota": record.quota_tokens,
        "period": record.quota_period,
        "allow_ips": list(record.allow_ips),
        "notes": record.notes,
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
    }


def token_view(token: GatewayToken, now: float) -> dict[str, Any]:
    """A `gateway.tokens` entry, in the same shape (read-only: `source` is `config`)."""
    rules = token.rules()
    expires = None if rules is None else rules.expires_at
    return {
        "name": token.name,
        "source": "config",
        "state": _state(True, expires, now),
        "token": "(sha256 in config)" if token.token_sha256 else "(in config)",
        "previous_token_until": None,
        "expires_at": _time(expires),
        "routes": list(token.routes),
        "providers": list(token.providers),
        "models": list(token.models),
        "rpm": token.rpm,
        "tpm": token.tpm,
        "max_parallel": token.max_parallel,
        "quota": token.quota,
        "period": token.period.value if token.quota is not None else None,
        "allow_ips": list(token.allow_ips),
        "notes": "",
        "created_at": None,
        "updated_at": None,
    }


def with_spend(views: list[dict[str, Any]], sums: Mapping[str, Mapping[Period, int]]) -> None:
    """Add each view's `spent`: the tokens of its quota's current period the store holds
    (`store.token_usage.period_sums`; None: no quota)."""
    for view in views:
        period = view["period"]
        found = sums.get(view["name"], {})
        view["spent"] = None if view["quota"] is None else found.get(Period(period), 0)


def client_table(views: list[dict[str, Any]]) -> str:
    """The `clients list` table: name, source, state, token, routes, limits (a quota as
    spent/quota/period), expiry."""
    lines = [("NAME", "SOURCE", "STATE", "TOKEN", "ROUTES", "LIMITS", "EXPIRES")]
    for view in views:
        limits = [
            f"{label}={view[key]}"
            for key, label in (("rpm", "rpm"), ("tpm", "tpm"), ("max_parallel", "parallel"))
            if view[key] is not None
        ]
        if view["quota"] is not None:
            limits.append(f"quota={view['spent']}/{view['quota']}/{view['period']}")
        lines.append(
            (
                view["name"],
                view["source"],
                view["state"],
                view["token"],
                ",".join(view["routes"]) or "-",
                " ".join(limits) or "-",
                view["expires_at"] or "never",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
