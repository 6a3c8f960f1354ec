"""Drop `ix_key_status_next_check_at`: `ix_key_status_next_check_at_key_id_model` (0011) begins
with the same column and serves every read it served (the Keeper's due-probe claim, the
probe backlog, the first-in-line time of a re-check), with the same plans on SQLite and
PostgreSQL; one index fewer to write on every probe result.

`ix_key_status_status` stays: the composite `ix_key_status_status_key_id_model` covers it on
SQLite, but PostgreSQL's planner prefers the narrow index for a bitmap scan of a common state
and, without it, counts the keys page's matches of such a filter by a sequential scan (twice
the time at 100,000 keys).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Drop the single-column index on `key_status.next_check_at`."""
    op.drop_index("ix_key_status_next_check_at", table_name="key_status")


def downgrade() -> None:
    """Recreate it."""
    op.create_index("ix_key_status_next_check_at", "key_status", ["next_check_at"])
