"""The Keeper's periodic tasks (VACUUM, purge): when each last ran, and who runs it now.

Revision ID: 0007
Revises: 0006
Create Date: 2026-01-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `keeper_tasks`: one row per task, its last finished run and its lease."""
    op.create_table(
        "keeper_tasks",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("last_run_at", sa.Double, nullable=True),
        sa.Column("lease_owner", sa.Text, nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_keeper_tasks"),
    )


def downgrade() -> None:
    """Drop `keeper_tasks`."""
    op.drop_table("keeper_tasks")
