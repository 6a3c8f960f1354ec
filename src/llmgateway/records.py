"""The values that cross the store's boundary: what goes in, what comes out.

They live outside `llmgateway.store` so that what only names them (the gateway's write-behind
queue, metrics, the key files' sync report) does not load SQLAlchemy with the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgateway.core.outcomes import ErrorReason, KeyStatus


@dataclass(frozen=True, slots=True)
class SyncChanges:
    """What one sync of a provider's keys (or proxies) changed; `active` is the count after it.
    `moved` counts active keys now found at another `file:line` (no change to the pool)."""

    added: int = 0
    removed: int = 0
    restored: int = 0
    active: int = 0
    moved: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.restored)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One (key, model) of the pool. `active` is False when the key left its files, its model left
    the config, or its provider was disabled: a delta carries such rows so the gateway drops them.
    `model` is `ALL_MODELS` for a provider with `shared_key_status`."""

    key_id: int
    provider: str
    secret: str = field(repr=False)
    model: str
    status: KeyStatus
    cooldown_until: float | None
    active: bool


@dataclass(frozen=True, slots=True)
class ProxyRow:
    """One proxy of a provider's pool (the URL may hold a password: it is left out of repr)."""

    proxy_id: int
    provider: str
    url: str = field(repr=False)
    status: KeyStatus
    active: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The pool as of `revision`: all active rows (from 0), or every row changed since then."""

    revision: int
    keys: list[KeyRow]
    proxies: list[ProxyRow]


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A status change observed for one (key, model), by a gateway request or a probe.

    Applying an event is idempotent; an event observed before the row's last check is ignored;
    `cooldown_until` only ever moves a deadline later; `next_check_at=None` keeps the schedule.
    `error_message` must already be masked; the store truncates it.
    """

    key_id: int
    model: str
    status: KeyStatus
    observed_at: float
    reason: ErrorReason | None = None
    cooldown_until: float | None = None
    status_code: int | None = None
    error_message: str | None = None
    next_check_at: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class StatusCount:
    """How many active (key, model) rows of a provider are in a status; `model` is `shared`
    for a provider with `shared_key_status`. `next_check_at` is the soonest among them."""

    provider: str
    model: str
    status: str
    count: int
    next_check_at: float | None


USAGE_HOUR = 3600
"""Seconds in one period of the usage counts (`UsageCount.hour` starts one)."""

USAGE_FLUSH_SEC = 2.0
"""How often a gateway writes its usage counts, and so how precise a key's "last used" is."""


@dataclass(frozen=True, slots=True)
class UsageCount:
    """Attempts a gateway sent upstream with one key × model (its status scope) in the hour
    starting at `hour` (epoch seconds), and how many of them failed."""

    provider: str
    key_id: int
    model: str
    hour: int
    requests: int
    failures: int


@dataclass(frozen=True, slots=True)
class TokenCount:
    """Answers relayed in the hour starting at `hour` (epoch seconds) for one client (a gateway
    token's name, `-` for a provider token) × route (alias, `-`) × provider × model × key, their
    tokens, and how many carried no usage (`missing`)."""

    hour: int
    client: str
    route: str
    provider: str
    model: str
    key_id: int
    requests: int
    input: int
    output: int
    cached: int
    reasoning: int
    missing: int


@dataclass(frozen=True, slots=True)
class KeyTurn:
    """A key whose stored status has just turned to one that takes it out of service
    (`invalid_key`, `no_access`, `no_quota`), as the write that made it so found it: the key
    masked and by fingerprint, never in full, and where the files hold it (`source`, None
    until a sync has recorded it). `models` are the status rows that turned (`shared` under
    `shared_key_status`)."""

    provider: str
    masked: str
    fingerprint: str
    source: str | None
    status: str
    models: tuple[str, ...]
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """Which keys a `llmgateway keys` command is about: every field set narrows it (None: any).
    `statuses` are stored statuses (`invalid_key`, …) of keys that are not disabled; empty:
    any status. `disabled` (asked for by `--status disabled`) adds the rows of disabled keys,
    whatever their stored status, to those `statuses` select (with no `statuses`: only those),
    so the states never overlap. `status_code` is the last HTTP status stored; `search` a
    fingerprint prefix or the last four characters the masked key shows (see
    `store.key_list.search_terms`). The filter never looks at the secret itself."""

    provider: str | None = None
    model: str | None = None
    statuses: frozenset[KeyStatus] = frozenset()
    disabled: bool = False
    status_code: int | None = None
    search: str | None = None

    def describe(self) -> str:
        """The filter in words, as the commands' options spell it (`` when it is empty)."""
        parts = []
        if self.provider is not None:
            parts.append(f"--provider {self.provider}")
        if self.model is not None:
            parts.append(f"--model {self.model}")
        parts += [f"--status {s.value}" for s in sorted(self.statuses)]
        if self.disabled:
            parts.append("--status disabled")
        if self.status_code is not None:
            parts.append(f"--status-code {self.status_code}")
        if self.search is not None:
            parts.append(f"--search {self.search}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked for an action, as the audit log records it: `session` is a console session's
    id (`bearer` for a request authorised by the admin token itself, `cli` for a command),
    `address` the client's address and `user_agent` what its browser or tool calls itself."""

    session: str
    address: str
    user_agent: str

    @classmethod
    def cli(cls) -> Actor:
        """The actor of a `llmgateway` command run on this machine."""
        return cls(session="cli", address="local", user_agent="llmgateway-cli")
