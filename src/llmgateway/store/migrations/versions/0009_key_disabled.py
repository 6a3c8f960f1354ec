"""When a key was disabled by `llmgateway keys disable` (None: it is not).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `keys.disabled_at`, empty: no key is disabled."""
    op.add_column("keys", sa.Column("disabled_at", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop `keys.disabled_at` (every disabled key is enabled again)."""
    op.drop_column("keys", "disabled_at")
