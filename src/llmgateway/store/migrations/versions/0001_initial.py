"""The initial schema: providers, keys, key status, proxies, proxy status, the revision counter.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create every table with its indexes, and the single `meta` row at revision 0."""
    meta = op.create_table(
        "meta",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_meta"),
    )
    op.bulk_insert(meta, [{"id": 1, "revision": 0}])
    op.create_table(
        "providers",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("provider_type", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_providers"),
        sa.UniqueConstraint("name", name="uq_providers_name"),
    )
    _create_member_table("keys", "value")
    op.create_table(
        "key_status",
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("failing_since", sa.Double, nullable=True),
        sa.Column("cooldown_until", sa.Double, nullable=True),
        sa.Column("next_check_at", sa.Double, nullable=False),
        sa.Column("last_checked_at", sa.Double, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Double, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.Text, nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.id"], name="fk_key_status_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", "model", name="pk_key_status"),
    )
    for column in ("status", "next_check_at", "revision"):
        op.create_index(f"ix_key_status_{column}", "key_status", [column])
    _create_member_table("proxies", "url")
    op.create_table(
        "proxy_status",
        sa.Column("proxy_id", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("failing_since", sa.Double, nullable=True),
        sa.Column("next_check_at", sa.Double, nullable=False),
        sa.Column("last_checked_at", sa.Double, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["proxy_id"],
            ["proxies.id"],
            name="fk_proxy_status_proxy_id_proxies",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("proxy_id", name="pk_proxy_status"),
    )
    for column in ("status", "next_check_at", "revision"):
        op.create_index(f"ix_proxy_status_{column}", "proxy_status", [column])


def _create_member_table(name: str, value_column: str) -> None:
    """`keys` and `proxies` share one shape: a provider's value, active or removed."""
    op.create_table(
        name,
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("provider_id", sa.Integer, nullable=False),
        sa.Column(value_column, sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("added_at", sa.Double, nullable=False),
        sa.Column("removed_at", sa.Double, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name=f"fk_{name}_provider_id_providers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
        sa.UniqueConstraint(
            "provider_id", value_column, name=f"uq_{name}_provider_id_{value_column}"
        ),
    )
    op.create_index(f"ix_{name}_revision", name, ["revision"])


def downgrade() -> None:
    """Drop everything (history included)."""
    for table in ("proxy_status", "proxies", "key_status", "keys", "providers", "meta"):
        op.drop_table(table)
