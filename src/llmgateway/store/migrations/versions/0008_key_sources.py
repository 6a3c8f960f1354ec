"""Where each key was found (`file:line`) and its SHA-256, for `llmgateway keys list|show`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-01-08
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def upgrade() -> None:
    """Add `keys.source` (filled by the next file sync) and `keys.digest` (filled here)."""
    op.add_column("keys", sa.Column("source", sa.Text, nullable=True))
    op.add_column("keys", sa.Column("digest", sa.Text, nullable=True))
    op.create_index("ix_keys_digest", "keys", ["digest"])
    bind = op.get_bind()
    keys = sa.table(
        "keys",
        sa.column("id", sa.Integer),
        sa.column("value", sa.Text),
        sa.column("digest", sa.Text),
    )
    if bind.dialect.name == "postgresql":
        hashed = sa.func.encode(sa.func.sha256(sa.func.convert_to(keys.c.value, "UTF8")), "hex")
        bind.execute(sa.update(keys).values(digest=hashed))
        return
    rows = bind.execute(sa.select(keys.c.id, keys.c.value)).all()
    update = (
        sa.update(keys)
        .where(keys.c.id == sa.bindparam("p_id"))
        .values(digest=sa.bindparam("p_digest"))
    )
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        bind.execute(
            update,
            [{"p_id": i, "p_digest": hashlib.sha256(v.encode()).hexdigest()} for i, v in batch],
        )


def downgrade() -> None:
    """Drop `keys.source` and `keys.digest`."""
    op.drop_index("ix_keys_digest", "keys")
    op.drop_column("keys", "digest")
    op.drop_column("keys", "source")
