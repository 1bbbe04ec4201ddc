"""The api_tokens table: tokens are kept as SHA-256 hashes, found by hash, listed and revoked by name."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy import exc as sa_exc

from responder.store.engine import Database
from responder.store.schema import api_tokens


@dataclass(frozen=True)
class ApiToken:
    name: str
    scope: str  # "admin" or "domain"
    domain: str | None
    created_at: dt.datetime


class TokenExists(Exception):
    """A token of that name exists already."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Tokens(Database):
    """All SQL on API tokens."""

    def add_token(self, name: str, scope: str, domain: str | None, token: str, now: dt.datetime) -> None:
        try:
            with self._begin("saving the token") as conn:
                conn.execute(
                    insert(api_tokens).values(
                        name=name, scope=scope, domain=domain, token_hash=token_hash(token), created_at=now
                    )
                )
        except sa_exc.IntegrityError:
            raise TokenExists(f"a token named {name!r} exists already") from None

    def token_for(self, token: str) -> ApiToken | None:
        """The token whose hash matches; the stored and computed hashes are compared in constant time."""
        wanted = token_hash(token)
        t = api_tokens.c
        with self._connect("looking up the token") as conn:
            row = conn.execute(
                select(t.name, t.scope, t.domain, t.created_at, t.token_hash).where(t.token_hash == wanted)
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        return ApiToken(row.name, row.scope, row.domain, row.created_at)

    def list_tokens(self) -> list[ApiToken]:
        t = api_tokens.c
        with self._connect("listing tokens") as conn:
            rows = conn.execute(select(t.name, t.scope, t.domain, t.created_at).order_by(t.name))
            return [ApiToken(r.name, r.scope, r.domain, r.created_at) for r in rows]

    def revoke_token(self, name: str) -> bool:
        with self._begin("revoking the token") as conn:
            return int(conn.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount) > 0
