"""Key-level leases: one keeper probes a key at a time, whatever its models.

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `keys.lease_owner` and `keys.lease_until`."""
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text, nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop the key-level lease columns."""
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
