"""Rate-limit counters: one row per (scope, key, fixed window).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Binary collation: keys that differ only in accents or case must stay distinct.
MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}


def _utc() -> sa.types.TypeEngine[Any]:
    # Naive UTC with microseconds; MySQL's DATETIME would otherwise drop them.
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "rate_counters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # "sender", "sender_domain", "recipient" or "global"
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("counter_key", sa.String(320), nullable=False),
        sa.Column("window_start", _utc(), nullable=False),
        sa.Column("window_end", _utc(), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        # set once per window by the first process that finds the limit reached (circuit-breaker log line)
        sa.Column("tripped", sa.Boolean, nullable=False),
        sa.UniqueConstraint("scope", "counter_key", "window_start", name="uq_rate_counters_scope_key_window"),
        **MYSQL,
    )
    op.create_index("ix_rate_counters_window_end", "rate_counters", ["window_end"])


def downgrade() -> None:
    op.drop_index("ix_rate_counters_window_end", table_name="rate_counters")
    op.drop_table("rate_counters")
