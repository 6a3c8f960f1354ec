"""Probe verification attempts per (key, model), for the Keeper's verification loop.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `key_status.probe_attempts`: re-probes made so far confirming a retryable failure."""
    with op.batch_alter_table("key_status") as batch:
        batch.add_column(
            sa.Column("probe_attempts", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop `key_status.probe_attempts`."""
    with op.batch_alter_table("key_status") as batch:
        batch.drop_column("probe_attempts")
