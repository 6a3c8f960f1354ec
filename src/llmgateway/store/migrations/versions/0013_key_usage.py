"""Hourly request and failure counts per key and model, per provider, and `keys.last_used_at`.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `key_usage`, `usage_hours` (both empty) and `keys.last_used_at` (None: not used
    since the gateways began to count)."""
    op.add_column("keys", sa.Column("last_used_at", sa.Double, nullable=True))
    op.create_table(
        "key_usage",
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.id"], name="fk_key_usage_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", "model", "hour", name="pk_key_usage"),
    )
    op.create_index("ix_key_usage_hour", "key_usage", ["hour"])
    failing = sa.text("failures > 0")
    op.create_index(
        "ix_key_usage_failing",
        "key_usage",
        ["hour", "key_id", "failures"],
        sqlite_where=failing,
        postgresql_where=failing,
    )
    op.create_table(
        "usage_hours",
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("hour", "provider", name="pk_usage_hours"),
    )


def downgrade() -> None:
    """Drop the counts and `keys.last_used_at`."""
    op.drop_table("usage_hours")
    op.drop_index("ix_key_usage_failing", table_name="key_usage")
    op.drop_index("ix_key_usage_hour", table_name="key_usage")
    op.drop_table("key_usage")
    op.drop_column("keys", "last_used_at")
