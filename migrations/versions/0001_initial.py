"""Vacations, their aliases, reply claims and the decision audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Binary collation: addresses that differ only in accents or case must stay distinct keys.
MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}


def _utc() -> sa.types.TypeEngine[Any]:
    # Naive UTC with microseconds; MySQL's DATETIME would otherwise drop them.
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "vacations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("from_header", sa.Text, nullable=True),
        sa.Column("template", sa.String(255), nullable=True),
        sa.Column("starts_at", _utc(), nullable=True),
        sa.Column("ends_at", _utc(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("interval_seconds", sa.Integer, nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.UniqueConstraint("address", name="uq_vacations_address"),
        **MYSQL,
    )
    op.create_table(
        "vacation_aliases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "vacation_id", sa.Integer, sa.ForeignKey("vacations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("address", sa.String(320), nullable=False),
        sa.UniqueConstraint("vacation_id", "address", name="uq_vacation_aliases_vacation_address"),
        **MYSQL,
    )
    op.create_table(
        "reply_claims",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "vacation_id", sa.Integer, sa.ForeignKey("vacations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sender_key", sa.String(320), nullable=False),
        sa.Column("replied_at", _utc(), nullable=False),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.UniqueConstraint("vacation_id", "sender_key", name="uq_reply_claims_vacation_sender"),
        **MYSQL,
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("queue_id", sa.String(64), nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_decisions_at", "decisions", ["at"])
    op.create_index("ix_decisions_sender", "decisions", ["sender"])
    op.create_index("ix_decisions_recipient", "decisions", ["recipient"])


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("reply_claims")
    op.drop_table("vacation_aliases")
    op.drop_table("vacations")
