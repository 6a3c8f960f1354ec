"""Alembic environment: migrations run only through `Store.upgrade()` on its own connection."""

from __future__ import annotations

from alembic import context

from llmgateway.store.tables import metadata

_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError("run migrations with `llmgateway db upgrade` (Store.upgrade())")
context.configure(connection=_connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
