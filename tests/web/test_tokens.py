"""API tokens on the command line and in the store (every backend); the change log and audit filters."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import httpx
import pytest
from sqlalchemy import select

from responder.decide.records import DecisionRecord
from responder.store.database import Store, TokenExists
from responder.store.schema import api_tokens
from tests.conftest import ConfigFactory
from tests.helpers import run_admin
from tests.web.conftest import ServeFactory, SettingsFactory


def test_token_create_list_revoke_and_use(
    make_config: ConfigFactory, make_settings: SettingsFactory, serve: ServeFactory, store: Store
) -> None:
    config = make_config()
    made = run_admin(config, "token", "create", "helpdesk", "--domain", "Example.COM")
    assert made.returncode == 0, made.stderr.decode()
    token = made.stdout.decode().strip()
    assert token.startswith("rsp_") and len(token) > 40
    assert b"shown only now" in made.stderr
    # Only the hash is stored.
    with store.engine.connect() as conn:
        (stored,) = conn.execute(select(api_tokens.c.token_hash, api_tokens.c.domain)).all()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored.domain == "example.com"
    assert token not in stored.token_hash
    assert run_admin(config, "token", "create", "helpdesk", "--admin").returncode == 1
    assert run_admin(config, "token", "create", "root", "--admin").returncode == 0
    listed = json.loads(run_admin(config, "token", "list", "--json").stdout)
    assert [(t["name"], t["scope"], t["domain"]) for t in listed] == [
        ("helpdesk", "domain", "example.com"),
        ("root", "admin", None),
    ]
    assert token not in run_admin(config, "token", "list").stdout.decode()
    served = serve(make_settings())
    with httpx.Client(base_url=served.url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/whoami", headers=headers).json()["domain"] == "example.com"
        assert run_admin(config, "token", "revoke", "helpdesk").returncode == 0
        assert client.get("/api/v1/whoami", headers=headers).status_code == 401
    assert run_admin(config, "token", "revoke", "helpdesk").returncode == 1
    assert run_admin(config, "token", "create", "bad name", "--admin").returncode == 1
    assert run_admin(config, "token", "create", "x").returncode == 2  # --admin or --domain is required


def test_tokens_and_changes_on_every_backend(backend_url: str) -> None:
    store = Store.open(backend_url)
    try:
        now = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
        store.add_token("root", "admin", None, "rsp_one", now)
        store.add_token("help_desk", "domain", "ex_ample.com", "rsp_two", now)
        with pytest.raises(TokenExists):
            store.add_token("root", "admin", None, "rsp_three", now)
        found = store.token_for("rsp_two")
        assert found is not None and (found.name, found.scope, found.domain) == (
            "help_desk",
            "domain",
            "ex_ample.com",
        )
        assert found.created_at == now
        assert store.token_for("rsp_twO") is None
        assert [t.name for t in store.list_tokens()] == ["help_desk", "root"]
        assert store.revoke_token("root") and not store.revoke_token("root")
        assert store.token_for("rsp_one") is None

        for minute, address in enumerate(
            ["a@ex_ample.com", "b@exXample.com", "c@ex_ample.com", "d@other.org"]
        ):
            store.record_change(
                now + dt.timedelta(minutes=minute),
                "token:x",
                "api",
                address,
                "vacation.set",
                {"message": [None, "é 😀"]},
            )
        # "_" in a domain is not a LIKE wildcard here.
        assert [c.address for c in store.list_changes(domain="ex_ample.com")] == [
            "c@ex_ample.com",
            "a@ex_ample.com",
        ]
        assert store.list_changes(address="d@other.org")[0].detail == {"message": [None, "é 😀"]}
        window = store.list_changes(since=now + dt.timedelta(minutes=1), until=now + dt.timedelta(minutes=3))
        assert [c.address for c in window] == ["c@ex_ample.com", "b@exXample.com"]

        for minute, (recipient, reason) in enumerate(
            [("a@ex_ample.com", None), ("a@ex_ample.com", "interval"), ("b@exXample.com", "interval")]
        ):
            action = "reply" if reason is None else "suppress"
            at = now + dt.timedelta(minutes=minute)
            store.record(DecisionRecord(at, "Q", "<m>", "s@example.org", recipient, action, reason, ""))
        assert len(store.decisions(reason="interval")) == 2
        assert [d.recipient for d in store.decisions(recipient_domain="ex_ample.com", reason="interval")] == [
            "a@ex_ample.com"
        ]
        assert len(store.decisions(since=now + dt.timedelta(minutes=1))) == 2
        assert len(store.decisions(until=now + dt.timedelta(minutes=1))) == 1
    finally:
        store.close()
