"""The original llmGateway's database as a user of it has one, for the upgrade tests.

`ORIGINAL_DDL` is written from the table description in the research notes
(shared/research/original-database.md: five tables, their indexes, cascading foreign keys; the
original created them at start-up with `CREATE TABLE IF NOT EXISTS`, without migrations).
`fill` puts keys in every status into it, shared (`__ALL_MODELS__`) and per model; `catalog`
reads what a rename or an import could change, to compare before and after.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

ORIGINAL_DDL = """
CREATE TABLE IF NOT EXISTS providers (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS proxies (
    id SERIAL PRIMARY KEY,
    address TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS provider_proxy_status (
    proxy_id INTEGER NOT NULL REFERENCES proxies(id) ON DELETE CASCADE,
    provider_id INTEGER NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    last_checked TIMESTAMPTZ,
    next_check_time TIMESTAMPTZ NOT NULL,
    error_message TEXT,
    PRIMARY KEY (proxy_id, provider_id)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id SERIAL PRIMARY KEY,
    provider_id INTEGER NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    key_value TEXT NOT NULL,
    UNIQUE (provider_id, key_value)
);
CREATE TABLE IF NOT EXISTS key_model_status (
    key_id INTEGER NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    model_name TEXT NOT NULL,
    status TEXT NOT NULL,
    failing_since TIMESTAMPTZ,
    last_checked TIMESTAMPTZ,
    next_check_time TIMESTAMPTZ NOT NULL,
    status_code INTEGER,
    response_time REAL,
    error_message TEXT,
    PRIMARY KEY (key_id, model_name)
);
CREATE INDEX IF NOT EXISTS idx_api_keys_provider_id ON api_keys (provider_id);
CREATE INDEX IF NOT EXISTS idx_key_model_status_status ON key_model_status (status);
CREATE INDEX IF NOT EXISTS idx_key_model_status_next_check_time
    ON key_model_status (next_check_time);
CREATE INDEX IF NOT EXISTS idx_key_model_status_status_model_name
    ON key_model_status (status, model_name);
CREATE INDEX IF NOT EXISTS idx_provider_proxy_status_next_check_time
    ON provider_proxy_status (next_check_time);
CREATE INDEX IF NOT EXISTS idx_provider_proxy_status_status ON provider_proxy_status (status);
"""

STATUSES = (
    "valid",
    "untested",
    "unknown",
    "network_error",
    "timeout",
    "server_error",
    "service_unavailable",
    "overloaded",
    "bad_request",
    "invalid_key",
    "no_access",
    "rate_limited",
    "no_quota",
    "no_model",
)
"""Every status the original wrote."""

INVALID = frozenset({"invalid_key", "no_access"})
SHARED = "__ALL_MODELS__"
_CODES = {
    "valid": 200,
    "bad_request": 400,
    "invalid_key": 401,
    "no_access": 403,
    "no_model": 404,
    "rate_limited": 429,
    "no_quota": 429,
    "server_error": 500,
    "service_unavailable": 503,
    "overloaded": 503,
    "timeout": 504,
}


@dataclass(frozen=True, slots=True)
class Provider:
    """One of the original's providers: `keys` keys named `<prefix><n>`, one status row per
    model of `models` (`(SHARED,)` for shared key status); every `skip`-th key is left out of
    the key files."""

    name: str
    prefix: str
    keys: int
    models: tuple[str, ...]
    skip: int = 0


@dataclass(slots=True)
class Filled:
    """What `fill` wrote: per provider, the keys in the files and those left out; per
    (provider, key), its rows as (model, status, next check)."""

    in_files: dict[str, list[str]] = field(default_factory=dict)
    left_out: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[tuple[str, str], list[tuple[str, str, dt.datetime]]] = field(default_factory=dict)

    def keys_with(self, provider: str, statuses: frozenset[str]) -> set[str]:
        """The keys of `provider` in the files with a row in one of `statuses`."""
        return {
            key
            for key in self.in_files[provider]
            if any(status in statuses for _, status, _ in self.rows[(provider, key)])
        }

    def due(self, now: dt.datetime, providers: Sequence[str]) -> tuple[set[str], int]:
        """The keys in the files of `providers` with a row due at `now`, and the rows due."""
        keys: set[str] = set()
        rows = 0
        for provider in providers:
            for key in self.in_files[provider]:
                due = [row for row in self.rows[(provider, key)] if row[2] <= now]
                rows += len(due)
                if due:
                    keys.add(key)
        return keys, rows


async def create(dsn: str) -> None:
    """The original's tables, empty, as it created them at start-up."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(ORIGINAL_DDL)
    finally:
        await connection.close()


async def fill(dsn: str, providers: Sequence[Provider], now: dt.datetime) -> Filled:
    """Create the original's tables and fill them: statuses in turn (every one of them), last
    checked an hour or more before `now`, a third of the rows due (an hour or more before
    `now`) and the rest not (an hour or more after), failing rows failing for days."""
    await create(dsn)
    filled = Filled()
    connection = await asyncpg.connect(dsn)
    try:
        key_rows: list[tuple[int, int, str]] = []
        status_rows: list[tuple[Any, ...]] = []
        key_id = 0
        for provider_id, provider in enumerate(providers, start=1):
            await connection.execute(
                "INSERT INTO providers (id, name) VALUES ($1, $2)", provider_id, provider.name
            )
            filled.in_files[provider.name] = []
            filled.left_out[provider.name] = []
            for n in range(provider.keys):
                key_id += 1
                secret = f"{provider.prefix}{n:06d}"
                key_rows.append((key_id, provider_id, secret))
                skip = provider.skip and n % provider.skip == 0
                (filled.left_out if skip else filled.in_files)[provider.name].append(secret)
                rows = filled.rows.setdefault((provider.name, secret), [])
                for m, model in enumerate(provider.models):
                    row = _status_row(key_id, model, key_id * 5 + m * 3, now)
                    status_rows.append(row)
                    rows.append((model, row[2], row[5]))
        await connection.copy_records_to_table(
            "api_keys", records=key_rows, columns=["id", "provider_id", "key_value"]
        )
        await connection.copy_records_to_table(
            "key_model_status",
            records=status_rows,
            columns=[
                "key_id",
                "model_name",
                "status",
                "failing_since",
                "last_checked",
                "next_check_time",
                "status_code",
                "response_time",
                "error_message",
            ],
        )
        for table in ("providers", "api_keys"):  # as if the rows had taken their serial ids
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
        await connection.execute(
            "INSERT INTO proxies (address) VALUES ('http://proxy.example:3128')"
        )
    finally:
        await connection.close()
    return filled


def _status_row(key_id: int, model: str, n: int, now: dt.datetime) -> tuple[Any, ...]:
    status = STATUSES[n % len(STATUSES)]
    hour = dt.timedelta(hours=1)
    tested = status != "untested"
    due = n % 3 == 0
    next_check = (
        now - hour - dt.timedelta(seconds=n) if due else now + hour * 2 + dt.timedelta(seconds=n)
    )
    failing = status not in ("valid", "untested")
    return (
        key_id,
        model,
        status,
        now - dt.timedelta(days=1 + n % 20) if failing else None,
        now - hour - dt.timedelta(seconds=n) if tested else None,
        next_check,
        _CODES.get(status) if tested else None,
        0.25 + (n % 10) / 10 if tested else None,
        f"upstream said {status} ({n})" if failing else None,
    )


async def original_counts(
    dsn: str, providers: Sequence[str], keys: Sequence[str] | None = None
) -> dict[tuple[str, str, str], int]:
    """The original's `GROUP BY provider, model, status` (what its metrics showed, `shared`
    for the marker) over `providers`, and only `keys` when given."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT p.name, s.model_name, s.status, count(*) FROM key_model_status s "
            "JOIN api_keys k ON k.id = s.key_id JOIN providers p ON p.id = k.provider_id "
            "WHERE p.name = ANY($1) AND ($2::text[] IS NULL OR k.key_value = ANY($2)) "
            "GROUP BY p.name, s.model_name, s.status",
            list(providers),
            None if keys is None else list(keys),
        )
    finally:
        await connection.close()
    return {
        (name, "shared" if model == SHARED else model, status): count
        for name, model, status, count in rows
    }


async def catalog(dsn: str) -> dict[str, Any]:
    """What a rename, an import or a migration could change in the public schema: every
    relation (tables, indexes, sequences) by name and kind, every constraint by table and
    name, each table's row count and each sequence's position."""
    connection = await asyncpg.connect(dsn)
    try:
        relations = await connection.fetch(
            "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
        )
        constraints = await connection.fetch(
            "SELECT t.relname, c.conname FROM pg_constraint c JOIN pg_class t "
            "ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' ORDER BY 1, 2"
        )
        counts = {
            name: await connection.fetchval(f'SELECT count(*) FROM "{name}"')
            for name, kind in relations
            if kind == "r"
        }
        sequences = {
            name: await connection.fetchval(f'SELECT last_value FROM "{name}"')
            for name, kind in relations
            if kind == "S"
        }
        content = (
            await connection.fetchval(
                "SELECT md5(string_agg(s::text, ',' ORDER BY s.key_id, s.model_name)) "
                "FROM key_model_status s"
            )
            if any(name == "key_model_status" for name, _ in relations)
            else None
        )
    finally:
        await connection.close()
    return {
        "relations": [tuple(r) for r in relations],
        "constraints": [tuple(c) for c in constraints],
        "counts": counts,
        "sequences": sequences,
        "status_rows": content,
    }
