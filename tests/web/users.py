"""The test site's people: mail users with their passwords, and admin tokens made for a test."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from responder.config.settings import Settings
from tests.helpers import FakeClock

ALICE = ("alice@example.com", "alice-pw")
BOB = ("bob@example.com", "bob-pw")
CAROL = ("carol@example.org", "carol-pw")


@dataclass(frozen=True)
class Site:
    config: Path
    settings: Settings
    base_url: str
    clock: FakeClock


def make_token(site: Site, name: str, admin: bool = False, domain: str | None = None) -> str:
    from responder.web import auth

    kind = "admin" if admin else "domain"
    token = f"tok-{name}"
    auth.TOKENS[token] = auth.Principal(kind, name, None, domain)  # type: ignore[attr-defined]
    return token


def later(days: int = 30) -> str:
    """A wall time ``days`` from the real now, for tests where the hook (on the real clock) decides."""
    return (dt.datetime.now() + dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")


def make_token_for(config: Path, name: str, admin: bool = False, domain: str | None = None) -> str:
    from responder.web import auth

    token = f"tok-{name}"
    auth.TOKENS[token] = auth.Principal("admin" if admin else "domain", name, None, domain)  # type: ignore[attr-defined]
    return token
