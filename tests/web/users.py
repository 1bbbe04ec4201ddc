"""The test site's people: the private Dovecot's users with their passwords, and admin tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from responder.config.load import load
from responder.config.settings import Settings
from tests.helpers import FakeClock
from tests.imapserver import USERS


def _user(address: str) -> tuple[str, str]:
    return address, USERS[address]


ALICE = _user("alice@example.com")
BOB = _user("bob@example.com")
CAROL = _user("carol@example.org")


@dataclass(frozen=True)
class Site:
    config: Path
    settings: Settings
    base_url: str
    clock: FakeClock


def make_token_for(config: Path, name: str, admin: bool = False, domain: str | None = None) -> str:
    """A new API token, stored as ``responder token create`` stores it; the secret is returned once."""
    from responder.store.database import Store
    from responder.web.auth import new_token

    token = new_token()
    store = Store.open(load(config).database.url)
    try:
        store.add_token(name, "admin" if admin else "domain", domain, token, dt.datetime.now(dt.UTC))
    finally:
        store.close()
    return token


def make_token(site: Site, name: str, admin: bool = False, domain: str | None = None) -> str:
    return make_token_for(site.config, name, admin, domain)


def later(days: int = 30) -> str:
    """A wall time ``days`` from the real now, for tests where the hook (on the real clock) decides."""
    return (dt.datetime.now() + dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")
