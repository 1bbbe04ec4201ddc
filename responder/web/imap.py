"""Mail passwords checked by logging in to the site's IMAP server (STARTTLS, TLS, or plain on loopback)."""

from __future__ import annotations

import asyncio
import imaplib
import ipaddress
import ssl
from urllib.parse import urlsplit

from responder.config.settings import Settings, WebSettings


class ImapUnavailable(Exception):
    """The IMAP server could not be asked (down, too slow, TLS failed): try again later, never signed in."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_context(web: WebSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=web.imap_ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _log_in(connection: imaplib.IMAP4, address: str, password: str) -> None:
    """SASL PLAIN (UTF-8 as it is) where offered, else LOGIN, which imaplib sends in ASCII."""
    if "AUTH=PLAIN" in connection.capabilities:
        secret = f"\0{address}\0{password}".encode()
        connection.authenticate("PLAIN", lambda _challenge: secret)
        return
    try:
        user = address.encode("ascii").decode()
        password.encode("ascii")
    except UnicodeEncodeError:
        raise imaplib.IMAP4.error("LOGIN cannot carry non-ASCII credentials") from None
    # imaplib quotes the password but sends the user name as given.
    connection.login('"' + user.replace("\\", "\\\\").replace('"', '\\"') + '"', password)


def _check(web: WebSettings, address: str, password: str) -> bool:
    url = urlsplit(web.imap)
    host = url.hostname or ""
    tls = url.scheme == "imaps"
    port = url.port or (993 if tls else 143)
    connection: imaplib.IMAP4
    try:
        if tls:
            connection = imaplib.IMAP4_SSL(
                host, port, ssl_context=_tls_context(web), timeout=web.imap_timeout
            )
        else:
            connection = imaplib.IMAP4(host, port, timeout=web.imap_timeout)
            if "STARTTLS" in connection.capabilities:
                try:
                    connection.starttls(_tls_context(web))
                except BaseException:
                    connection.shutdown()
                    raise
            elif not _is_loopback(host):
                connection.shutdown()
                raise ImapUnavailable(f"{web.imap} offers no STARTTLS: a password is not sent in clear")
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise ImapUnavailable(f"cannot reach {web.imap}: {exc}") from None
    try:
        if "LOGINDISABLED" in connection.capabilities:
            raise ImapUnavailable(f"{web.imap} refuses LOGIN on this connection")
        try:
            _log_in(connection, address, password)
        except imaplib.IMAP4.error as exc:
            # [UNAVAILABLE] (RFC 5530) is the server's own fault, not a wrong password.
            if "UNAVAILABLE" in str(exc).upper():
                raise ImapUnavailable(f"{web.imap} cannot check passwords now: {exc}") from None
            return False
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise ImapUnavailable(f"{web.imap} failed during LOGIN: {exc}") from None
        return True
    finally:
        try:
            connection.logout()
        except (TimeoutError, OSError, imaplib.IMAP4.error):
            connection.shutdown()


async def check_password(settings: Settings, address: str, password: str) -> bool:
    """Whether ``address`` logs in to ``[web] imap`` with ``password``; ``ImapUnavailable`` if unknown.

    Addresses or passwords with a line break or NUL never reach the server (they would end the command).
    """
    if not address or not password or any(c in s for s in (address, password) for c in "\r\n\0"):
        return False
    web = settings.web
    try:
        # imaplib's own timeout bounds each socket operation; this bounds the whole exchange.
        return await asyncio.wait_for(
            asyncio.to_thread(_check, web, address, password), timeout=web.imap_timeout * 3
        )
    except TimeoutError:
        raise ImapUnavailable(f"{web.imap} did not answer within {web.imap_timeout * 3:g}s") from None
