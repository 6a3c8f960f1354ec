"""The database schema (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Times are epoch seconds (UTC) stored as double-precision floats: the in-memory pool compares
them with `time.time()` directly. Every write transaction bumps `meta.revision` and stamps the
rows it changes with the new value, so a reader can ask "what changed since revision R".
A change that matters to the gateway pool is stamped on `key_status` (for keys; a disable or
enable, which concerns every row of a key, on `keys` alone) and on `proxies`/`proxy_status` (for
proxies), so a delta read needs only those revision indexes.

The migrations in `migrations/versions` are the source of truth for existing databases; these
definitions must match them (a test compares the two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.observe.masking import MASKED_MIN

if TYPE_CHECKING:  # each dialect's module loads only where it is used (PostgreSQL's: ~40 ms)
    from sqlalchemy.dialects import postgresql, sqlite

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

providers = sa.Table(
    "providers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("provider_type", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

keys = sa.Table(
    "keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "provider_id",
        sa.Integer,
        sa.ForeignKey("providers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("added_at", sa.Double, nullable=False),
    sa.Column("removed_at", sa.Double, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
    # the keeper probing this key (any of its models) and until when: see store/probes.py
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    # where the sync last found the key, `file:line` (None: not synced from files since the
    # original llmGateway's database was imported)
    sa.Column("source", sa.Text, nullable=True),
    # SHA-256 of `value` as 64 hex digits, for finding a key by its fingerprint (a prefix)
    sa.Column("digest", sa.Text, nullable=True, index=True),
    # when `llmgateway keys disable` took the key out of service (None: it is not); no sync
    # touches it, and neither gateways nor the Keeper use a disabled key
    sa.Column("disabled_at", sa.Double, nullable=True),
    # the last four characters the masked key shows (None for a key too short to show any),
    # so the console finds `sk-…a1b2` by an index, never by a substring of the secret
    sa.Column("suffix", sa.Text, nullable=True, index=True),
    # when a gateway last used the key, as precise as its usage write-behind (see
    # `llmgateway.store.usage`); None: not since the gateways began to count
    sa.Column("last_used_at", sa.Double, nullable=True),
    sa.UniqueConstraint("provider_id", "value"),
    # the console's keys page: a provider's keys in key order, the disabled ones
    sa.Index("ix_keys_provider_id_id", "provider_id", "id"),
    sa.Index("ix_keys_disabled_at", "disabled_at"),
)

key_status = sa.Table(
    "key_status",
    metadata,
    sa.Column("key_id", sa.Integer, sa.ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True),
    # ALL_MODELS when the provider has `shared_key_status: true`.
    sa.Column("model", sa.Text, primary_key=True),
    # False once the model left the config (or shared_key_status flipped): kept as history.
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("status", sa.Text, nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("failing_since", sa.Double, nullable=True),
    sa.Column("cooldown_until", sa.Double, nullable=True),
    # (the due-probe claim reads ix_key_status_next_check_at_key_id_model below; 0014)
    sa.Column("next_check_at", sa.Double, nullable=False),
    sa.Column("last_checked_at", sa.Double, nullable=True),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Double, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    # Re-probes so far confirming a retryable failure (the Keeper's verification loop).
    sa.Column("probe_attempts", sa.Integer, nullable=False, server_default="0"),
    # the console's keys page: each filter and sort column, then the page order (key, model)
    sa.Index("ix_key_status_model_key_id", "model", "key_id"),
    sa.Index("ix_key_status_status_key_id_model", "status", "key_id", "model"),
    sa.Index("ix_key_status_status_code_key_id_model", "status_code", "key_id", "model"),
    sa.Index("ix_key_status_failing_since_key_id_model", "failing_since", "key_id", "model"),
    sa.Index("ix_key_status_next_check_at_key_id_model", "next_check_at", "key_id", "model"),
)

proxies = sa.Table(
    "proxies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "provider_id",
        sa.Integer,
        sa.ForeignKey("providers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("added_at", sa.Double, nullable=False),
    sa.Column("removed_at", sa.Double, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
    sa.UniqueConstraint("provider_id", "url"),
)

proxy_status = sa.Table(
    "proxy_status",
    metadata,
    sa.Column(
        "proxy_id",
        sa.Integer,
        sa.ForeignKey("proxies.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("status", sa.Text, nullable=False, index=True),
    sa.Column("failing_since", sa.Double, nullable=True),
    sa.Column("next_check_at", sa.Double, nullable=False, index=True),
    sa.Column("last_checked_at", sa.Double, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
)

breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("state", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_egresses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Double, nullable=True),
    sa.Column("reset_at", sa.Double, nullable=True),
)
"""Circuit breakers: each provider's state as a gateway last saw it (0 closed, 1 half-open,
2 open; not stamped with revisions, it is no part of the pool), and `reset_at`, set by
`llmgateway breaker reset` and acted on by every gateway at its next refresh."""

provider_models = sa.Table(
    "provider_models",
    metadata,
    sa.Column(
        "provider_id",
        sa.Integer,
        sa.ForeignKey("providers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("names", sa.Text, nullable=False),  # a JSON array of strings
    sa.Column("fetched_at", sa.Double, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)
"""The upstream's model names as the Keeper last fetched them, one row per provider: see
`llmgateway.store.model_lists`. `revision` is that of the last change of `names`."""

limit_members = sa.Table(
    "limit_members",
    metadata,
    sa.Column("namespace", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("member", sa.Text, primary_key=True),
    sa.Column("seen_until", sa.Double, nullable=False),
)
"""The gateways counting per-key limits in the store through a transaction pooler: one row per
live gateway of a `limits.key_prefix` namespace, renewed every refresh until `seen_until`
(epoch seconds of the database's clock); see `llmgateway.limits.fleet`."""

keeper_tasks = sa.Table(
    "keeper_tasks",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("last_run_at", sa.Double, nullable=True),
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
)
"""The Keeper's periodic tasks (`vacuum`, `purge`), one row per task: when it last finished
(None: never) and the keeper running it now, until when (see `llmgateway.store.keeper_tasks`).
Kept in the store so that a schedule survives restarts and several keepers run a task once."""


key_usage = sa.Table(
    "key_usage",
    metadata,
    sa.Column("key_id", sa.Integer, sa.ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),  # the status scope: ALL_MODELS when shared
    sa.Column("hour", sa.BigInteger, primary_key=True, index=True),  # its start, epoch seconds
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
)
"""Requests the gateways sent with each key × model, per hour, and how many failed; kept for
`worker.usage_retention_days` (see `llmgateway.store.usage`)."""

sa.Index(
    "ix_key_usage_failing",
    key_usage.c.hour,
    key_usage.c.key_id,
    key_usage.c.failures,
    sqlite_where=key_usage.c.failures > 0,
    postgresql_where=key_usage.c.failures > 0,
)

usage_hours = sa.Table(
    "usage_hours",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True),  # its start, epoch seconds
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
)
"""`key_usage` summed per provider and hour, written with it: the overview's rates and chart
read 24 rows per provider instead of every key's."""

token_usage = sa.Table(
    "token_usage",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True, index=True),  # its start, epoch seconds
    sa.Column("client", sa.Text, primary_key=True),  # a gateway token's name, `-` otherwise
    sa.Column("route", sa.Text, primary_key=True),  # the route alias, `-` without one
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),  # the configured model serving the request
    sa.Column("key_id", sa.Integer, primary_key=True),  # the upstream key (no foreign key:
    # the counts outlive a purged key, shown as such)
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("missing", sa.BigInteger, nullable=False),  # answers that carried no usage
)
"""Tokens of the answers the gateways relayed, per client × route × provider × model × key and
hour; kept for `worker.usage_retention_days` (see `llmgateway.store.token_usage`)."""

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Double, nullable=False, index=True),
    sa.Column("session", sa.Text, nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("user_agent", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("keys", sa.Integer, nullable=False),
)
"""What was done from the console or the CLI, newest last: who (the console session's id,
`bearer` for a script's Bearer request, `cli`), from where (client address, user agent), the
action, its detail (a filter in words, a fingerprint: never a secret) and how many keys it
concerned. See `llmgateway.store.audit`."""


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("action", sa.Text, nullable=False),  # disable, enable, reset, recheck
    sa.Column("chosen", sa.Text, nullable=False),  # the filter as JSON (see store.jobs)
    sa.Column("state", sa.Text, nullable=False, index=True),  # queued, running, done, ...
    sa.Column("total", sa.Integer, nullable=False),  # keys fixed at submission
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),  # keys done so far
    sa.Column("changed", sa.Integer, nullable=False, server_default="0"),  # keys changed
    sa.Column("row_count", sa.Integer, nullable=False, server_default="0"),  # rows changed
    sa.Column("after_key", sa.Integer, nullable=False, server_default="0"),  # last key done
    sa.Column("recheck_at", sa.Double, nullable=True),  # a recheck's due time, fixed
    sa.Column("submitted_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Column("actor_session", sa.Text, nullable=False),
    sa.Column("actor_address", sa.Text, nullable=False),
    sa.Column("actor_user_agent", sa.Text, nullable=False),
    sa.Column("lease_owner", sa.Text, nullable=True),  # the runner running it, until when
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("error", sa.Text, nullable=True),  # why it failed
)
"""Bulk jobs (`llmgateway keys disable|enable|reset|recheck` and the console's bulk actions):
what is done to which keys, by whom, how far it got, and the runner holding it (see
`llmgateway.store.jobs`)."""

job_keys = sa.Table(
    "job_keys",
    metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key_id", sa.Integer, primary_key=True),
)
"""The keys an unfinished job has left to do, fixed when it was submitted (a key added later
is never in it); each chunk deletes the rows it did, in its own transaction."""


config_reloads = sa.Table(
    "config_reloads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("config_hash", sa.Text, nullable=False),
    sa.Column("requested_at", sa.Double, nullable=False),
)
"""Reload requests (`llmgateway reload`): every gateway and keeper re-reads its config file
when it sees a request newer than the last it acted on; `config_hash` is the hash of the file
the command read (see `llmgateway.store.config_runs`)."""

config_runs = sa.Table(
    "config_runs",
    metadata,
    sa.Column("process", sa.Text, primary_key=True),  # host:pid
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("config_hash", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
"""The config each running process runs, one row per process: the hash of the file it last
applied and the outcome of its last reload, renewed at start, at each reload and every
minute (`llmgateway status` shows the rows renewed lately)."""


def suffix_of(value: sa.ColumnElement[str]) -> sa.ColumnElement[str | None]:
    """`keys.suffix` computed in SQL from `value` (`observe.masking.suffix` in Python)."""
    length = sa.func.length(value)
    return sa.case((length >= MASKED_MIN, sa.func.substr(value, length - 3)), else_=None)


def insert_into(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `table` in `conn`'s dialect, which has `on_conflict_do_…` (upserts)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("token_sha256", sa.Text, nullable=False, unique=True),  # hex; never the token
    sa.Column("prefix", sa.Text, nullable=False),  # the token's first characters, for display
    sa.Column("last4", sa.Text, nullable=False),
    sa.Column("previous_sha256", sa.Text, nullable=True),  # the token before a rotation
    sa.Column("previous_until", sa.Double, nullable=True),  # valid until then
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=True),
    sa.Column("routes", sa.Text, nullable=False),  # JSON lists of globs
    sa.Column("providers", sa.Text, nullable=False),
    sa.Column("models", sa.Text, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("max_parallel", sa.Integer, nullable=True),
    sa.Column("quota_tokens", sa.BigInteger, nullable=True),
    sa.Column("quota_period", sa.Text, nullable=True),
    sa.Column("allow_ips", sa.Text, nullable=False),  # JSON list of CIDRs
    sa.Column("notes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
"""The clients `llmgateway clients` manages: each a token (its SHA-256 only), what it may use
and its limits; gateways load them all at each refresh (see `llmgateway.store.clients`)."""
