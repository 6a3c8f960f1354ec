"""Lease rows of the gateways counting per-key limits in the store through a transaction
pooler, where a session advisory lock would not last.

Revision ID: 0006
Revises: 0005
Create Date: 2026-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `limit_members`: one row per live gateway of a limits namespace, until when."""
    op.create_table(
        "limit_members",
        sa.Column("namespace", sa.BigInteger, nullable=False),
        sa.Column("member", sa.Text, nullable=False),
        sa.Column("seen_until", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "member", name="pk_limit_members"),
    )


def downgrade() -> None:
    """Drop `limit_members`."""
    op.drop_table("limit_members")
