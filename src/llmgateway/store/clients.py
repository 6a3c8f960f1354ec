"""The clients `llmgateway clients` manages, in the store: each write announces itself
(`Kind.CLIENTS`, at commit on PostgreSQL) so every gateway reloads the clients at once; on
SQLite they reach the gateways at their next refresh. Only the SHA-256 of a token is stored,
with its first and last characters for display."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmgateway.core.clients import ClientRules, Period, networks
from llmgateway.store.notify import Kind, publish
from llmgateway.store.tables import clients

LISTS = ("routes", "providers", "models", "allow_ips")
"""The columns that hold a JSON list of text."""

RULE_DEFAULTS: Mapping[str, object] = {
    "enabled": True,
    "expires_at": None,
    "routes": ("*",),
    "providers": (),
    "models": (),
    "rpm": None,
    "tpm": None,
    "max_parallel": None,
    "quota_tokens": None,
    "quota_period": None,
    "allow_ips": (),
    "notes": "",
}
"""A new client's rule columns, where nothing sets them: enabled, every route, no limits."""


class NameTaken(Exception):
    """A client of that name exists already."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """One stored client (never its token: the SHA-256 of it, and its ends for display)."""

    name: str
    token_sha256: str
    prefix: str
    last4: str
    previous_sha256: str | None
    previous_until: float | None
    enabled: bool
    expires_at: float | None
    routes: tuple[str, ...]
    providers: tuple[str, ...]
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    quota_tokens: int | None
    quota_period: str | None
    allow_ips: tuple[str, ...]
    notes: str
    created_at: float
    updated_at: float

    @property
    def shown(self) -> str:
        """The token as it may be shown: its first characters … its last four."""
        return f"{self.prefix}…{self.last4}"

    def rules(self) -> ClientRules:
        """The client's expiry, ranges and limits, as the gateway enforces them."""
        return ClientRules(
            self.name,
            expires_at=self.expires_at,
            allow_ips=networks(self.allow_ips),
            models=self.models,
            rpm=self.rpm,
            tpm=self.tpm,
            max_parallel=self.max_parallel,
            quota_tokens=self.quota_tokens,
            period=Period(self.quota_period) if self.quota_period else None,
        )


def _record(row: sa.Row[Any]) -> ClientRecord:
    values = dict(row._mapping)
    values.pop("id", None)
    for column in LISTS:
        values[column] = tuple(json.loads(values[column]))
    values["enabled"] = bool(values["enabled"])
    return ClientRecord(**values)


def _columns(values: Mapping[str, object]) -> dict[str, object]:
    columns: dict[str, object] = {}
    for key, value in values.items():
        if key in LISTS:
            assert isinstance(value, (tuple, list))
            value = json.dumps(list(value))
        columns[key] = value
    return columns


async def create(engine: AsyncEngine, values: Mapping[str, object], now: float) -> None:
    """Store a new client (`values`: every column but the times); NameTaken when the name is."""
    row = {**_columns(values), "created_at": now, "updated_at": now}
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(clients).values(row))
            await publish(conn, Kind.CLIENTS, 0, "")
    except IntegrityError:
        raise NameTaken(str(values["name"])) from None


async def all_clients(engine: AsyncEngine) -> list[ClientRecord]:
    """Every stored client, by name."""
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(clients).order_by(clients.c.name))).all()
    return [_record(row) for row in rows]


async def find(engine: AsyncEngine, name: str) -> ClientRecord | None:
    """The client named `name`, or None."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(clients).where(clients.c.name == name))).first()
    return None if row is None else _record(row)


async def change(engine: AsyncEngine, name: str, values: Mapping[str, object], now: float) -> bool:
    """Set `values` (columns) on client `name`; False when there is no such client."""
    row = {**_columns(values), "updated_at": now}
    async with engine.begin() as conn:
        stmt = sa.update(clients).where(clients.c.name == name).values(row)
        found = (await conn.execute(stmt)).rowcount > 0
        if found:
            await publish(conn, Kind.CLIENTS, 0, "")
    return found


async def delete(engine: AsyncEngine, name: str) -> bool:
    """Remove client `name`; False when there is no such client."""
    async with engine.begin() as conn:
        found = (await conn.execute(sa.delete(clients).where(clients.c.name == name))).rowcount > 0
        if found:
            await publish(conn, Kind.CLIENTS, 0, "")
    return found


async def stamp(engine: AsyncEngine) -> tuple[int, float, int]:
    """What changes whenever a client is added, changed or removed: (count, newest update,
    highest id); the gateways reload the clients only when it moved."""
    query = sa.select(sa.func.count(), sa.func.max(clients.c.updated_at), sa.func.max(clients.c.id))
    async with engine.connect() as conn:
        count, newest, top = (await conn.execute(query)).one()
    return int(count), float(newest or 0.0), int(top or 0)
