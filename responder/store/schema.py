"""The database tables as SQLAlchemy Core metadata; alembic migrations create them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# The alembic revision this code expects; tests check it is the head of migrations/.
SCHEMA_REVISION = "0004"

ADDRESS_LENGTH = 320
MYSQL_TABLE_ARGS: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC with microseconds on every backend; hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


metadata = MetaData()

vacations = Table(
    "vacations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(ADDRESS_LENGTH), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("message", Text, nullable=False),
    Column("subject", Text, nullable=True),
    Column("from_header", Text, nullable=True),
    Column("template", String(255), nullable=True),
    Column("starts_at", UtcDateTime, nullable=True),
    Column("ends_at", UtcDateTime, nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("interval_seconds", Integer, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("address", name="uq_vacations_address"),
    **MYSQL_TABLE_ARGS,
)

vacation_aliases = Table(
    "vacation_aliases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("vacation_id", Integer, ForeignKey("vacations.id", ondelete="CASCADE"), nullable=False),
    Column("address", String(ADDRESS_LENGTH), nullable=False),
    UniqueConstraint("vacation_id", "address", name="uq_vacation_aliases_vacation_address"),
    **MYSQL_TABLE_ARGS,
)

# One row per (vacation, sender): the last reply, so the interval can be claimed atomically.
reply_claims = Table(
    "reply_claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("vacation_id", Integer, ForeignKey("vacations.id", ondelete="CASCADE"), nullable=False),
    Column("sender_key", String(ADDRESS_LENGTH), nullable=False),
    Column("replied_at", UtcDateTime, nullable=False),
    Column("message_key", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("token", String(32), nullable=False),
    UniqueConstraint("vacation_id", "sender_key", name="uq_reply_claims_vacation_sender"),
    **MYSQL_TABLE_ARGS,
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("queue_id", String(64), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("sender", String(ADDRESS_LENGTH), nullable=False),
    Column("recipient", String(ADDRESS_LENGTH), nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("detail", Text, nullable=False),
    Index("ix_decisions_at", "at"),
    Index("ix_decisions_sender", "sender"),
    Index("ix_decisions_recipient", "recipient"),
    **MYSQL_TABLE_ARGS,
)

# Rate-limit counters: fixed windows aligned to the epoch, one row per (scope, key, window).
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(16), nullable=False),
    Column("counter_key", String(ADDRESS_LENGTH), nullable=False),
    Column("window_start", UtcDateTime, nullable=False),
    Column("window_end", UtcDateTime, nullable=False),
    Column("count", Integer, nullable=False),
    Column("tripped", Boolean, nullable=False),
    UniqueConstraint("scope", "counter_key", "window_start", name="uq_rate_counters_scope_key_window"),
    Index("ix_rate_counters_window_end", "window_end"),
    **MYSQL_TABLE_ARGS,
)

# Retired addresses: mail to them is refused at RCPT by the policy server, or bounced by a DSN.
retired_addresses = Table(
    "retired_addresses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(ADDRESS_LENGTH), nullable=False),
    Column("message", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("starts_at", UtcDateTime, nullable=True),
    Column("ends_at", UtcDateTime, nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("address", name="uq_retired_addresses_address"),
    **MYSQL_TABLE_ARGS,
)

# One row per (retired address, sender): the last DSN, claimed like reply_claims.
bounce_claims = Table(
    "bounce_claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("retired_id", Integer, ForeignKey("retired_addresses.id", ondelete="CASCADE"), nullable=False),
    Column("sender_key", String(ADDRESS_LENGTH), nullable=False),
    Column("replied_at", UtcDateTime, nullable=False),
    Column("message_key", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("token", String(32), nullable=False),
    UniqueConstraint("retired_id", "sender_key", name="uq_bounce_claims_retired_sender"),
    **MYSQL_TABLE_ARGS,
)

# API tokens of admins and domain admins: only the SHA-256 of each token is kept.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("scope", String(8), nullable=False),
    Column("domain", String(255), nullable=True),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("name", name="uq_api_tokens_name"),
    UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    **MYSQL_TABLE_ARGS,
)

# What was changed through the web service: who, when, which address, each field before and after.
changes = Table(
    "changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(400), nullable=False),
    Column("via", String(8), nullable=False),
    Column("address", String(ADDRESS_LENGTH), nullable=False),
    Column("action", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_changes_at", "at"),
    Index("ix_changes_address", "address"),
    **MYSQL_TABLE_ARGS,
)
