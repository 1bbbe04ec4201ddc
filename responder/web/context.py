"""What every request handler of the web service shares: settings, the store, the clock, sign-in parts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from responder.config.settings import Settings
from responder.store.database import Store
from responder.web.throttle import SignInThrottle

# (settings, address, password) -> whether the IMAP server accepts them; responder.web.imap's by default.
PasswordCheck = Callable[[Settings, str, str], Awaitable[bool]]
MIN_SECRET = 32


class SecretError(Exception):
    """The session secret file is missing, unreadable or too short."""


def read_secret(path: str) -> bytes:
    """The key that signs session cookies, read from ``[web] secret_file`` (never from the TOML)."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"web.secret_file {path} cannot be read: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise SecretError(
            f"web.secret_file {path} holds {len(secret)} bytes, at least {MIN_SECRET} are needed: "
            "create it with `head -c 48 /dev/urandom | base64 > FILE`"
        )
    return secret


@dataclass
class WebContext:
    settings: Settings
    store: Store
    clock: Callable[[], dt.datetime]
    imap: PasswordCheck
    throttle: SignInThrottle
    # Signs session cookies; the pages read it, the API and JMAP never need it.
    secret: bytes
