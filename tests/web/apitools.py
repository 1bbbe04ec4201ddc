"""A served app with an admin token, a domain admin token and users who sign in with their mail password."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx

from responder.store.database import Store
from tests.imapserver import USERS

ADMIN_TOKEN = "rsp_admin-test-token-0123456789abcdefghijklmnopqrstuv"
DOMAIN_TOKEN = "rsp_domain-test-token-0123456789abcdefghijklmnopqrstu"


def basic(address: str, password: str | None = None) -> dict[str, str]:
    secret = USERS[address] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{address}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_tokens(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    store.add_token("root", "admin", None, ADMIN_TOKEN, now)
    store.add_token("helpdesk", "domain", "example.com", DOMAIN_TOKEN, now)


@dataclass
class Api:
    client: httpx.Client
    store: Store

    admin = bearer(ADMIN_TOKEN)
    helpdesk = bearer(DOMAIN_TOKEN)
    alice = basic("alice@example.com")
    bob = basic("bob@example.com")
    carol = basic("carol@example.org")

    def call(self, method: str, path: str, who: dict[str, str], body: Any = None) -> httpx.Response:
        return self.client.request(method, path, headers=who, json=body)

    def ok(self, method: str, path: str, who: dict[str, str], body: Any = None) -> Any:
        answer = self.call(method, path, who, body)
        assert answer.status_code == 200, answer.text
        return answer.json()
