"""The upstream's model names as the Keeper last fetched them, one row per provider.

Revision ID: 0005
Revises: 0004
Create Date: 2026-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `provider_models`: a provider's model names (a JSON array), when they were last
    fetched, and the revision of their last change."""
    op.create_table(
        "provider_models",
        sa.Column("provider_id", sa.Integer, nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("fetched_at", sa.Double, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name="fk_provider_models_provider_id_providers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("provider_id", name="pk_provider_models"),
    )


def downgrade() -> None:
    """Drop `provider_models`."""
    op.drop_table("provider_models")
