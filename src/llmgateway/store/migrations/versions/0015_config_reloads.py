"""Add `config_reloads` (the reload requests of `llmgateway reload`) and `config_runs` (the
config each running process runs, as `llmgateway status` shows it).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create both tables, empty."""
    op.create_table(
        "config_reloads",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("config_hash", sa.Text, nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_config_reloads"),
    )
    op.create_table(
        "config_runs",
        sa.Column("process", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("config_hash", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("process", name="pk_config_runs"),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("config_runs")
    op.drop_table("config_reloads")
