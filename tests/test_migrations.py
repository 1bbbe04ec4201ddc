"""The alembic migrations, up and down, on SQLite, PostgreSQL and MariaDB; they match schema.py."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from responder.paths import resource_dir
from responder.store.database import Store
from responder.store.schema import SCHEMA_REVISION, metadata


def _script() -> ScriptDirectory:
    return ScriptDirectory(str(resource_dir("migrations")))


def _tables(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_the_code_expects_the_head_revision() -> None:
    assert _script().get_heads() == [SCHEMA_REVISION]


def test_every_revision_up_and_down(empty_backend_url: str) -> None:
    store = Store.open(empty_backend_url)
    revisions = [r.revision for r in reversed(list(_script().walk_revisions()))]
    try:
        previous = "base"
        seen: list[set[str]] = [set()]
        for revision in revisions:
            store.upgrade(revision)
            assert store.current_revision() == revision
            seen.append(_tables(store))
            assert seen[-1] > seen[-2], f"{revision} adds no table"
            store.downgrade(previous)
            assert _tables(store) == seen[-2]
            store.upgrade(revision)
            previous = revision
        assert _tables(store) == set(metadata.tables)
        store.check_schema()
        store.downgrade("base")
        assert _tables(store) == set()
        assert store.current_revision() is None
        store.upgrade()
        assert store.current_revision() == SCHEMA_REVISION
    finally:
        store.close()


def test_the_migrated_schema_matches_schema_py(empty_backend_url: str) -> None:
    store = Store.open(empty_backend_url)
    try:
        store.upgrade()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences: list[Any] = compare_metadata(context, metadata)
    finally:
        store.close()
    assert differences == []
