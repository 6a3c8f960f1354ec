"""Circuit breakers shared through the store: last known state per provider, manual resets.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `breakers`: a provider's breaker state as gateways last saw it, and reset requests."""
    op.create_table(
        "breakers",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("state", sa.Integer, nullable=False, server_default="0"),
        sa.Column("open_egresses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double, nullable=True),
        sa.Column("reset_at", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("provider", name="pk_breakers"),
    )


def downgrade() -> None:
    """Drop `breakers`."""
    op.drop_table("breakers")
