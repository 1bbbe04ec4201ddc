"""API tokens (hashes only) and the log of changes made through the web service.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}


def _utc() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        # "admin" (every address) or "domain" (the addresses of `domain`)
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("domain", sa.String(255), nullable=True),
        # SHA-256 of the token, hex: the token itself is shown once and never stored.
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        **MYSQL,
    )
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _utc(), nullable=False),
        # "user:alice@example.com" or "token:NAME"
        sa.Column("actor", sa.String(400), nullable=False),
        # "api", "jmap" or "web"
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        # JSON: each changed field with its value before and after
        sa.Column("detail", sa.Text, nullable=False),
        sa.Index("ix_changes_at", "at"),
        sa.Index("ix_changes_address", "address"),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("changes")
    op.drop_table("api_tokens")
