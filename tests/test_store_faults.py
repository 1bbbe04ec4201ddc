"""Database faults an admin must fix become StoreUnavailable (the hook defers), never a drop."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from responder.errors import StoreUnavailable
from responder.store import Store
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
