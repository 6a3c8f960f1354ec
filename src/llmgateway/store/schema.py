"""Is the store ready to serve as it is? The cheap check a gateway makes at start, without
Alembic: the revision in `alembic_version` against `SCHEMA_HEAD`, whether there are keys yet,
and (PostgreSQL) whether the original llmGateway's tables are there. Only when something is to
be done does the gateway start the migration (a child process that loads Alembic)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llmgateway.store import original

SCHEMA_HEAD = "0017"
"""The newest migration in `migrations/versions` (a test checks it against Alembic's head):
update it with every new migration."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What the check found: the schema revision (`""`: none, an empty database), whether any
    key was ever synced, and whether the original llmGateway's tables wait for an import."""

    revision: str
    has_keys: bool
    original_tables: bool = False

    def why_migrate(self) -> str | None:
        """Why the store must be migrated before use (None: it need not be)."""
        if self.original_tables:
            return "the original llmGateway's tables are in the database"
        if not self.revision:
            return "the database is new (no schema yet)"
        if self.revision != SCHEMA_HEAD:
            return f"its schema is at {self.revision}, this version needs {SCHEMA_HEAD}"
        return None

    def why_prepare(self) -> str | None:
        """Why the store must be migrated or synced before a gateway serves from it (None: it
        can serve its keys as they are while the key files are synced)."""
        return self.why_migrate() or (None if self.has_keys else "it has no keys yet")


async def schema_state(conn: AsyncConnection) -> SchemaState:
    """Read the state of the store on `conn` (a few small queries)."""
    tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    if "alembic_version" not in tables:
        revision = ""
    else:
        found = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        revision = "" if found is None else str(found)
    has_keys = "keys" in tables and (
        await conn.scalar(sa.text("SELECT 1 FROM keys LIMIT 1")) is not None
    )
    imported = conn.dialect.name == "postgresql" and await original.present(conn)
    return SchemaState(revision, has_keys, imported)
