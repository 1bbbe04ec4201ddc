"""Retired addresses (bounced at RCPT by the policy server, after the queue by a DSN) and their claims.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Binary collation: addresses that differ only in accents or case must stay distinct keys.
MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}


def _utc() -> sa.types.TypeEngine[Any]:
    # Naive UTC with microseconds; MySQL's DATETIME would otherwise drop them.
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "retired_addresses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        # RFC 3463 status, always 5.x.y
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("starts_at", _utc(), nullable=True),
        sa.Column("ends_at", _utc(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.UniqueConstraint("address", name="uq_retired_addresses_address"),
        **MYSQL,
    )
    # Same shape as reply_claims: the last DSN per (retired address, sender), claimed atomically.
    op.create_table(
        "bounce_claims",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "retired_id",
            sa.Integer,
            sa.ForeignKey("retired_addresses.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sender_key", sa.String(320), nullable=False),
        sa.Column("replied_at", _utc(), nullable=False),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.UniqueConstraint("retired_id", "sender_key", name="uq_bounce_claims_retired_sender"),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("bounce_claims")
    op.drop_table("retired_addresses")
