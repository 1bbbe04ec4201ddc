"""Database faults an admin must fix become StoreUnavailable (the hook defers), never a drop."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.errors import StoreUnavailable
from responder.store.database import Store
from tests.backends import Databases


@pytest.mark.backend
def test_permission_denied_is_transient(databases: Databases) -> None:
    url = make_url(databases.migrated("postgresql"))
    role = f"responder_noaccess_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    try:
        store = Store.open(url.set(username=role, password=None).render_as_string(hide_password=False))
        with pytest.raises(StoreUnavailable, match="permission denied"):
            store.vacation_for(["alice@example.com"])
        store.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


@pytest.mark.backend
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_the_hooks_statements_are_bounded_and_admin_work_is_not(kind: str, databases: Databases) -> None:
    """A statement of the hook ends after busy_timeout + STATEMENT_SLACK; a migration may take longer."""
    url = databases.migrated(kind)
    sleep = "SELECT pg_sleep(3)" if kind == "postgresql" else "SELECT SLEEP(3)"
    services = Services(settings_from_mapping({"database": {"url": url, "busy_timeout": "0.5s"}}))
    admin = Store.open(url, 0.5)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError), services.store.engine.connect() as conn:
            conn.exec_driver_sql(sleep)
        assert time.monotonic() - started < 3
        with admin.engine.connect() as conn:
            conn.exec_driver_sql(sleep)
    finally:
        services.close()
        admin.close()
