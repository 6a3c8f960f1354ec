"""Add `clients` (the client tokens `llmgateway clients` issues, by SHA-256, with their rules).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table, empty."""
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_sha256", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("last4", sa.Text, nullable=False),
        sa.Column("previous_sha256", sa.Text, nullable=True),
        sa.Column("previous_until", sa.Double, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("routes", sa.Text, nullable=False),
        sa.Column("providers", sa.Text, nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("max_parallel", sa.Integer, nullable=True),
        sa.Column("quota_tokens", sa.BigInteger, nullable=True),
        sa.Column("quota_period", sa.Text, nullable=True),
        sa.Column("allow_ips", sa.Text, nullable=False),
        sa.Column("notes", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clients"),
        sa.UniqueConstraint("name", name="uq_clients_name"),
        sa.UniqueConstraint("token_sha256", name="uq_clients_token_sha256"),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("clients")
