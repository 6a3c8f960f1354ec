"""Bulk jobs: an action on the set of keys a filter selected when it was submitted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `jobs` (one row per bulk job: what, who, progress, lease) and `job_keys` (the keys
    each unfinished job has left to do)."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("chosen", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("changed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("row_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("after_key", sa.Integer, nullable=False, server_default="0"),
        sa.Column("recheck_at", sa.Double, nullable=True),
        sa.Column("submitted_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double, nullable=True),
        sa.Column("finished_at", sa.Double, nullable=True),
        sa.Column("actor_session", sa.Text, nullable=False),
        sa.Column("actor_address", sa.Text, nullable=False),
        sa.Column("actor_user_agent", sa.Text, nullable=False),
        sa.Column("lease_owner", sa.Text, nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "job_keys",
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_keys_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "key_id", name="pk_job_keys"),
    )


def downgrade() -> None:
    """Drop `job_keys` and `jobs` (the jobs' history with them)."""
    op.drop_table("job_keys")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")
