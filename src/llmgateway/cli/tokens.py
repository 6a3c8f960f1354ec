"""Weak tokens at start-up: `gateway`, `serve` and `worker` refuse a placeholder or short token
that guards a listener off loopback, and warn of one on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings

WAY_OUT = (
    "set a long random token: python -c 'import secrets; print(secrets.token_urlsafe(32))', "
    "or set gateway.allow_weak_tokens: true to accept it on purpose"
)


def guard_tokens(
    settings: Settings,
    gateway_host: str,
    metrics_hosts: tuple[str, ...],
    admin_hosts: tuple[str, ...] = (),
) -> None:
    """Refuse to start (exit 2, one line per token) when a placeholder or short token guards a
    listener off loopback; on loopback warn and go on. Gateway tokens guard `gateway_host`, the
    metrics token each of `metrics_hosts`, the admin token each of `admin_hosts` (none: this
    command serves no console, so its token is not judged). Token values are never shown."""
    refused = token_refusals(settings, gateway_host, metrics_hosts, admin_hosts)
    for line in refused:
        click.echo(line, err=True)
    if refused:
        raise SystemExit(2)


def token_refusals(
    settings: Settings,
    gateway_host: str,
    metrics_hosts: tuple[str, ...],
    admin_hosts: tuple[str, ...] = (),
) -> list[str]:
    """What `guard_tokens` refuses, one line per token (empty: all are accepted; the weak
    ones on loopback are logged as warnings). A config reload refuses a new config with the
    same lines."""
    import logging

    from llmgateway.config.weak_tokens import is_loopback, weak_tokens

    weak = weak_tokens(settings)
    if not admin_hosts:
        weak = [(where, why) for where, why in weak if not where.startswith("admin.")]
    log = logging.getLogger("llmgateway.tokens")
    if not weak:
        return []
    if settings.gateway.allow_weak_tokens:
        paths = ", ".join(where for where, _ in weak)
        log.info("gateway.allow_weak_tokens: weak tokens accepted on purpose (%s)", paths)
        return []
    refused = []
    for where, why in weak:
        hosts = _guarded(where, gateway_host, metrics_hosts, admin_hosts)
        public = [host for host in hosts if not is_loopback(host)]
        if public:
            listener = f"it guards {public[0]}, which is not loopback"
            refused.append(f"{where}: {why}; {listener}: refusing to start; {WAY_OUT}")
        else:
            log.warning("%s: %s, accepted on loopback only; %s", where, why, WAY_OUT)
    return refused


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """`token_refusals` for the listeners of one command, applied to a reloaded config
    (picklable: `gateway --workers N` hands it to its processes)."""

    gateway_host: str
    metrics_hosts: tuple[str, ...]
    admin_hosts: tuple[str, ...] = ()

    def __call__(self, settings: Settings) -> list[str]:
        """The lines refusing `settings`' weak tokens (empty: none refused)."""
        return token_refusals(settings, self.gateway_host, self.metrics_hosts, self.admin_hosts)


def metrics_hosts(settings: Settings, gateway_host: str, keeper: bool) -> tuple[str, ...]:
    """Where the metrics token guards something: the gateway's listener (`/metrics`, the
    `/readyz` details) and, for a command running the Keeper, its own metrics listener."""
    worker = settings.worker
    if keeper and settings.metrics.enabled and worker.metrics_port != 0:
        return (gateway_host, worker.metrics_host)
    return (gateway_host,)


def _guarded(
    where: str, gateway_host: str, metrics: tuple[str, ...], admin: tuple[str, ...]
) -> tuple[str, ...]:
    """The listeners the token at setting `where` guards."""
    if where.startswith("metrics."):
        return metrics
    if where.startswith("admin."):
        return admin
    return (gateway_host,)


def admin_hosts(settings: Settings) -> tuple[str, ...]:
    """Where a command running the Keeper serves the console (guarded by `admin.token`): its
    own listener's host with `admin.port`, else the Keeper's metrics host; none when off."""
    admin = settings.admin
    if not admin.enabled:
        return ()
    return (admin.listen_host,) if admin.port is not None else (settings.worker.metrics_host,)
