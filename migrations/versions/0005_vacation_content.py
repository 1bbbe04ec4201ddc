"""Vacation content: HTML messages, an external message and audience, languages; claims per audience.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Binary collation: addresses that differ only in accents or case must stay distinct keys.
MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    # Batch mode: SQLite alters a table by copying it; the other backends get plain ALTER TABLE.
    with op.batch_alter_table("vacations") as batch:
        batch.add_column(sa.Column("html_message", sa.Text, nullable=True))
        batch.add_column(sa.Column("external_subject", sa.Text, nullable=True))
        batch.add_column(sa.Column("external_message", sa.Text, nullable=True))
        batch.add_column(sa.Column("external_html_message", sa.Text, nullable=True))
        batch.add_column(sa.Column("external_audience", sa.String(8), nullable=False, server_default="all"))
        batch.add_column(sa.Column("default_language", sa.String(64), nullable=True))
    op.create_table(
        "vacation_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "vacation_id", sa.Integer, sa.ForeignKey("vacations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("audience", sa.String(8), nullable=False),
        sa.Column("language", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("html_message", sa.Text, nullable=True),
        sa.UniqueConstraint("vacation_id", "audience", "language", name="uq_vacation_messages_key"),
        **MYSQL,
    )
    # Every claim so far was for the one message a vacation had: the internal one. The new unique key
    # is made before the old one goes, so that InnoDB always has an index for the vacation_id key.
    with op.batch_alter_table("reply_claims") as batch:
        batch.add_column(sa.Column("audience", sa.String(8), nullable=False, server_default="internal"))
        batch.create_unique_constraint(
            "uq_reply_claims_vacation_sender_audience", ["vacation_id", "sender_key", "audience"]
        )
        batch.drop_constraint("uq_reply_claims_vacation_sender", type_="unique")


def downgrade() -> None:
    # Only the internal claims are the old meaning of a claim; external ones are dropped.
    op.execute(sa.text("DELETE FROM reply_claims WHERE audience <> 'internal'"))
    with op.batch_alter_table("reply_claims") as batch:
        batch.create_unique_constraint("uq_reply_claims_vacation_sender", ["vacation_id", "sender_key"])
        batch.drop_constraint("uq_reply_claims_vacation_sender_audience", type_="unique")
        batch.drop_column("audience")
    op.drop_table("vacation_messages")
    columns = (
        "default_language",
        "external_audience",
        "external_html_message",
        "external_message",
        "external_subject",
        "html_message",
    )
    if op.get_bind().dialect.name == "sqlite":
        # Not batch mode: it would copy the table and drop the old one, and with foreign keys on that
        # DROP TABLE deletes every alias and reply claim (ON DELETE CASCADE). SQLite 3.35 and later
        # drop a plain column in place.
        for column in columns:
            op.execute(sa.text(f"ALTER TABLE vacations DROP COLUMN {column}"))
        return
    for column in columns:
        op.drop_column("vacations", column)
