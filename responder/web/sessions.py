"""The pages' session: a signed, expiring cookie holding who signed in and the CSRF token of their forms."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

COOKIE = "responder_session"
CSRF_FIELD = "csrf_token"
# Sign-in forms are answered within this: an anonymous session only carries the sign-in form's token.
ANONYMOUS_LIFETIME = 3600.0


@dataclass(frozen=True)
class Session:
    """One browser's state. ``kind`` is empty before sign-in; ``issued`` is a Unix time."""

    csrf: str
    kind: str = ""
    name: str = ""
    address: str | None = None
    domain: str | None = None
    issued: float = 0.0

    @property
    def signed_in(self) -> bool:
        return bool(self.kind)

    def as_dict(self) -> dict[str, Any]:
        return {"c": self.csrf, "k": self.kind, "n": self.name, "a": self.address, "d": self.domain}


def new_session(**who: Any) -> Session:
    """A fresh session with a new CSRF token: signing in or out never keeps the old token (fixation)."""
    return Session(csrf=secrets.token_urlsafe(32), **who)


class _Signer(TimestampSigner):
    """itsdangerous' timestamp signer on the service's clock (the one clock tests replace)."""

    clock: Callable[[], float] = time.time

    def get_timestamp(self) -> int:
        return int(self.clock())


class SessionCodec:
    """Signs sessions into cookie values and reads them back, refusing forged or expired ones."""

    def __init__(self, secret: bytes, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        signer = type("Signer", (_Signer,), {"clock": staticmethod(clock)})
        self.serializer = URLSafeTimedSerializer(secret, salt="responder-web-session", signer=signer)
        self.lifetime = lifetime
        self.clock = clock

    def dumps(self, session: Session) -> str:
        return self.serializer.dumps(session.as_dict())

    def loads(self, value: str) -> Session | None:
        try:
            data, signed_at = self.serializer.loads(value, max_age=int(self.lifetime), return_timestamp=True)
        except BadSignature:  # SignatureExpired included
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        kind = data.get("k") or ""
        if not kind and self.clock() - signed_at.timestamp() > ANONYMOUS_LIFETIME:
            return None
        return Session(
            csrf=data["c"],
            kind=str(kind),
            name=str(data.get("n") or ""),
            address=data.get("a"),
            domain=data.get("d"),
            issued=signed_at.timestamp(),
        )

    def read(self, request: Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        return None if value is None else self.loads(value)

    def write(self, request: Request, response: Response, session: Session) -> None:
        """Set the cookie: HttpOnly, SameSite=Lax, Secure whenever the browser came over HTTPS.

        Behind a reverse proxy the scheme is the one the proxy reported, when uvicorn trusts it
        (``forwarded_allow_ips``): a proxy it does not trust cannot turn Secure off or on.
        """
        response.set_cookie(
            COOKIE,
            self.dumps(session),
            max_age=int(self.lifetime),
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )

    @staticmethod
    def clear(request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
        )


def csrf_matches(session: Session | None, submitted: object) -> bool:
    """The form's token is the session's own (compared in constant time)."""
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
