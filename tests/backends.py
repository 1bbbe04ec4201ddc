"""Real PostgreSQL and MariaDB for the backend tests: uniquely named databases, dropped afterwards.

The servers come from RESPONDER_TEST_POSTGRESQL_URL / RESPONDER_TEST_MYSQL_URL (`.ci/run` sets both);
a test that needs one skips, naming the variable, when it is not set. Each test session creates its
own databases ``responder_test_<random>``, so parallel runs and leftovers of killed runs never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from responder.store.database import Store
from responder.store.schema import metadata

ENV = {"postgresql": "RESPONDER_TEST_POSTGRESQL_URL", "mysql": "RESPONDER_TEST_MYSQL_URL"}
KINDS = ("sqlite", "postgresql", "mysql")


def backend_params() -> list[object]:
    """Parameters for a test that runs on every backend; the server ones carry the `backend` mark."""
    return ["sqlite"] + [pytest.param(kind, marks=pytest.mark.backend) for kind in ENV]


def server_url(kind: str) -> str:
    url = os.environ.get(ENV[kind])
    if not url:
        pytest.skip(f"{ENV[kind]} is not set: no {kind} server to test against")
    return url


class Databases:
    """The databases one test session created on the servers; ``drop_all`` removes them."""

    def __init__(self) -> None:
        self._created: list[tuple[str, str]] = []
        self._migrated: dict[str, str] = {}

    def create(self, kind: str) -> str:
        """A new empty database on the ``kind`` server; its URL."""
        server = make_url(server_url(kind))
        name = f"responder_test_{secrets.token_hex(6)}"
        extra = " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if kind == "mysql" else ""
        engine = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}{extra}")
        engine.dispose()
        self._created.append((kind, name))
        return server.set(database=name).render_as_string(hide_password=False)

    def migrated(self, kind: str) -> str:
        """This session's database on the ``kind`` server, at the head revision and without rows."""
        if kind not in self._migrated:
            url = self.create(kind)
            store = Store.open(url)
            store.upgrade()
            store.close()
            self._migrated[kind] = url
        url = self._migrated[kind]
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(delete(table))
        engine.dispose()
        return url

    def drop_all(self) -> None:
        for kind, name in self._created:
            server = make_url(server_url(kind))
            engine = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            with engine.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
            engine.dispose()
        self._created.clear()
        self._migrated.clear()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    made = Databases()
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file per session at the head revision; tests get copies of it (migrating takes long)."""
    path = tmp_path_factory.mktemp("migrated") / "responder.sqlite3"
    store = Store.open(f"sqlite:///{path}")
    store.upgrade()
    store.close()
    return path


def sqlite_url(migrated: Path, path: Path) -> str:
    """A copy of the migrated file at ``path``: the same bytes an upgrade would write, WAL mode included."""
    shutil.copyfile(migrated, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=backend_params())
def backend_url(
    request: pytest.FixtureRequest, databases: Databases, tmp_path: Path, migrated_sqlite: Path
) -> str:
    """A database at the head revision without rows: SQLite file, PostgreSQL or MariaDB."""
    kind: str = request.param
    if kind == "sqlite":
        return sqlite_url(migrated_sqlite, tmp_path / "responder.sqlite3")
    return databases.migrated(kind)


@pytest.fixture(params=backend_params())
def empty_backend_url(request: pytest.FixtureRequest, databases: Databases, tmp_path: Path) -> str:
    """A database without any table: SQLite file, PostgreSQL or MariaDB."""
    kind: str = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    return databases.create(kind)
