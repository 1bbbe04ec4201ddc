"""The schema's version: upgrade and downgrade through the alembic migrations, and the check at start."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from responder.errors import SchemaMismatch, StoreUnavailable
from responder.paths import resource_dir
from responder.store.engine import Database
from responder.store.schema import SCHEMA_REVISION


def alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    config.attributes["connection"] = connection
    return config


class Migrations(Database):
    """The schema version of the database and the migrations between versions."""

    def current_revision(self) -> str | None:
        if not self.exists():
            # As unavailable as an unreachable server (an unmounted volume comes back), not empty.
            missing = f"database file {self.sqlite_path} does not exist"
            raise StoreUnavailable(f"{missing}: run `responder db upgrade`")
        with self._guard("reading the schema version"), self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
                if _is_missing_table(exc):
                    return None
                raise

    def check_schema(self) -> None:
        """Refuse to work on a schema other than the one this code was written for."""
        revision = self.current_revision()
        if revision != SCHEMA_REVISION:
            found = revision or "empty"
            raise SchemaMismatch(
                f"database schema is {found}, this responder needs {SCHEMA_REVISION}: "
                "run `responder db upgrade`"
            )

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        if not self.exists():
            import sqlite3

            assert self.sqlite_path is not None
            try:
                sqlite3.connect(self.sqlite_path).close()  # the one place that creates the file
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot create the database file {self.sqlite_path}: {exc}") from None
        with self._begin("migrating") as conn:
            if conn.dialect.name == "sqlite":
                # WAL lets the hook read while another process writes; it is a property of the file.
                conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            command.upgrade(alembic_config(conn), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self._begin("migrating") as conn:
            command.downgrade(alembic_config(conn), revision)


def _is_missing_table(exc: sa_exc.DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return "no such table" in message or "does not exist" in message or "doesn't exist" in message
