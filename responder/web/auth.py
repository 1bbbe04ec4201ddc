"""Who is who: principals of mail users and API tokens, sign-in with the mail password, and scopes."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Literal

from responder.mail.message import normalize_address
from responder.web.context import WebContext
from responder.web.imap import ImapUnavailable
from responder.web.throttle import Throttled

__all__ = [
    "BadCredentials",
    "ImapUnavailable",
    "Principal",
    "Throttled",
    "may_manage",
    "new_token",
    "principal_for_token",
    "sign_in",
]

TOKEN_PREFIX = "rsp_"  # noqa: S105 (a marker that makes leaked tokens easy to find)


class BadCredentials(Exception):
    """The address and password do not sign in; the same for an unknown address and a wrong password."""

    def __init__(self) -> None:
        super().__init__("the address or the password is wrong")


@dataclass(frozen=True)
class Principal:
    """A signed-in mail user (``address``), a domain admin token (``domain``) or an admin token."""

    kind: Literal["user", "admin", "domain"]
    name: str
    address: str | None = None
    domain: str | None = None

    @property
    def actor(self) -> str:
        """How the change log names this principal."""
        return f"user:{self.address}" if self.kind == "user" else f"token:{self.name}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def may_manage(p: Principal, address: str) -> bool:
    """Whether ``p`` may read and change what belongs to ``address`` (normalized)."""
    if p.kind == "admin":
        return True
    if p.kind == "domain":
        return p.domain is not None and domain_of(address) == p.domain
    return p.address is not None and address == p.address


async def sign_in(ctx: WebContext, address: str, password: str, client_host: str) -> Principal:
    """A user principal for a mail address and password the IMAP server accepts.

    ``Throttled`` before the password is even checked once the account or the client failed too
    often; ``BadCredentials`` for a wrong password and for an address that is no account alike;
    ``ImapUnavailable`` when the server cannot be asked (never a sign-in).
    """
    account = normalize_address(address.strip()) if address else None
    key = account or address.strip().lower()
    ctx.throttle.check(key, client_host)
    if account is None or not password:
        ctx.throttle.failed(key, client_host)
        raise BadCredentials()
    if not await ctx.imap(ctx.settings, account, password):
        ctx.throttle.failed(key, client_host)
        raise BadCredentials()
    ctx.throttle.succeeded(key)
    return Principal("user", account, address=account)


def new_token() -> str:
    """A fresh API token: 256 bits from the system's CSPRNG."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _token_principal(ctx: WebContext, token: str) -> Principal | None:
    found = ctx.store.token_for(token)
    if found is None:
        return None
    if found.scope == "admin":
        return Principal("admin", found.name)
    return Principal("domain", found.name, domain=found.domain)


def principal_for_token(ctx: WebContext, token: str) -> Principal | None:
    """The principal of a Bearer token, or None; only hashes are compared (in constant time)."""
    if not token or len(token) > 200:
        return None
    return _token_principal(ctx, token)


async def principal_for_token_async(ctx: WebContext, token: str) -> Principal | None:
    return await asyncio.to_thread(principal_for_token, ctx, token)
