"""What a configuration reload changes: the settings that differ between the config in force and
a new one, and which of them a running process cannot take without a restart.

Pure: two validated `Settings` in, names out. Every setting is compared generically (whatever
the settings object holds), so a section or provider type added later is reloaded without a
change here; only the settings fixed at start are named (`RESTART_ONLY`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmgateway.config.settings import Settings

RESTART_ONLY: tuple[str, ...] = (
    "gateway.host",
    "gateway.port",
    "gateway.workers",
    "gateway.max_connections",
    "gateway.client_header_timeout_sec",
    "gateway.shutdown_drain_timeout_sec",
    "gateway.token_accounting",
    "database",
    "limits",
    "metrics",
    "admin",
    "worker.metrics_host",
    "worker.metrics_port",
    "logging.format",
    "logging.dir",
)
"""Settings a running process keeps until it restarts: its listeners (address, port, process
count, connection limits, the metrics and console listeners), the store's connection, the
per-key limits' backend and the log's format and files. A dotted name covers what is below it."""


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """The settings that differ (dotted names, sorted), and which of them need a restart."""

    changed: tuple[str, ...]
    restart_only: tuple[str, ...]
    providers_added: tuple[str, ...]
    providers_removed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Whether nothing differs."""
        return not self.changed

    def live(self) -> tuple[str, ...]:
        """The changed settings a running process takes at once."""
        return tuple(name for name in self.changed if name not in self.restart_only)


def config_diff(old: Settings, new: Settings) -> ConfigDiff:
    """What differs between `old` (in force) and `new`."""
    before, after = _dump(old), _dump(new)
    changed = tuple(sorted(_differences(before, after, "")))
    restart = tuple(name for name in changed if _restart_only(name))
    old_names, new_names = set(old.providers), set(new.providers)
    return ConfigDiff(
        changed,
        restart,
        tuple(sorted(new_names - old_names)),
        tuple(sorted(old_names - new_names)),
    )


def _dump(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="python")


def _differences(before: Any, after: Any, where: str) -> list[str]:
    """Dotted names of the differing settings: a section is looked into (two levels under
    `providers`: `providers.NAME.SECTION`), a value that differs is named whole."""
    if before == after:
        return []
    depth = where.count(".") + 1 if where else 0
    within = depth < 2 or (where.startswith("providers.") and depth < 3)
    if within and isinstance(before, Mapping) and isinstance(after, Mapping):
        names: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            inner = f"{where}.{key}" if where else str(key)
            if key not in before or key not in after:
                names.append(inner)
            else:
                names.extend(_differences(before[key], after[key], inner))
        return names
    return [where]


def _restart_only(name: str) -> bool:
    return any(name == fixed or name.startswith(fixed + ".") for fixed in RESTART_ONLY)


def restart_line(diff: ConfigDiff) -> str | None:
    """The log line naming the changed settings that wait for a restart, or None."""
    if not diff.restart_only:
        return None
    names = ", ".join(diff.restart_only)
    return f"config reload: these settings take effect only after a restart: {names}"
