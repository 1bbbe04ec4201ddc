"""Shared fixtures: a migrated SQLite file, a loopback SMTP sink, configs; helpers are in tests/helpers.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from responder.store.database import Store
from tests.helpers import FakeClock, write_config
from tests.sink import SmtpSink

# backend_url / databases: the same test on SQLite, PostgreSQL and MariaDB; migrated_sqlite.
pytest_plugins = ("tests.backends",)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "responder.sqlite3"


@pytest.fixture
def db_url(db_path: Path, migrated_sqlite: Path) -> str:
    """A fresh SQLite file at the head revision: a copy of the one the session migrated with alembic."""
    shutil.copyfile(migrated_sqlite, db_path)
    return f"sqlite:///{db_path}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


ConfigFactory = Callable[..., Path]


@pytest.fixture
def make_config(tmp_path: Path, db_url: str, sink: SmtpSink) -> ConfigFactory:
    """Write a config for the test database and sink; keyword sections merge over the defaults."""
    counter = iter(range(1000))

    def make(**sections: Mapping[str, object]) -> Path:
        merged: dict[str, dict[str, object]] = {
            "database": {"url": db_url},
            "smtp": {"host": "127.0.0.1", "port": sink.port, "timeout": 10, "hostname": "mx.example.net"},
            "verify": {"require": "off"},
        }
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return write_config(tmp_path / f"responder-{next(counter)}.toml", merged)

    return make
