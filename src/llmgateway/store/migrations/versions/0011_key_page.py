"""The console's keys page: `keys.suffix` (the four characters a masked key shows) and the
indexes that let every filter and sort of the page read a page, not the table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MASKED_MIN = 12  # observe.masking.MASKED_MIN when this was written: shorter keys show nothing

INDEXES = {
    "ix_keys_suffix": ("keys", ["suffix"]),
    "ix_keys_provider_id_id": ("keys", ["provider_id", "id"]),
    "ix_keys_disabled_at": ("keys", ["disabled_at"]),
    "ix_key_status_model_key_id": ("key_status", ["model", "key_id"]),
    "ix_key_status_status_key_id_model": ("key_status", ["status", "key_id", "model"]),
    "ix_key_status_status_code_key_id_model": ("key_status", ["status_code", "key_id", "model"]),
    "ix_key_status_failing_since_key_id_model": (
        "key_status",
        ["failing_since", "key_id", "model"],
    ),
    "ix_key_status_next_check_at_key_id_model": (
        "key_status",
        ["next_check_at", "key_id", "model"],
    ),
}


def upgrade() -> None:
    """Add `keys.suffix`, filled here from each key (as the sync fills it from now on), and
    the indexes of the keys page."""
    op.add_column("keys", sa.Column("suffix", sa.Text, nullable=True))
    keys = sa.table("keys", sa.column("value", sa.Text), sa.column("suffix", sa.Text))
    length = sa.func.length(keys.c.value)
    shown = sa.case((length >= MASKED_MIN, sa.func.substr(keys.c.value, length - 3)), else_=None)
    op.get_bind().execute(sa.update(keys).values(suffix=shown))
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    """Drop the indexes and `keys.suffix`."""
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table)
    op.drop_column("keys", "suffix")
