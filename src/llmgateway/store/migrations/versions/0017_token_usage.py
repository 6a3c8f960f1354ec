"""Hourly token counts per client, route, provider, model and key (`token_usage`).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `token_usage`, empty."""
    op.create_table(
        "token_usage",
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("missing", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "client", "route", "provider", "model", "key_id", name="pk_token_usage"
        ),
    )
    op.create_index("ix_token_usage_hour", "token_usage", ["hour"])


def downgrade() -> None:
    """Drop the token counts."""
    op.drop_index("ix_token_usage_hour", table_name="token_usage")
    op.drop_table("token_usage")
