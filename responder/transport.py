"""Send a composed response through the SMTP relay; 4xx and network faults are transient, 5xx final."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

import aiosmtplib

from responder.compose import Outgoing
from responder.config import SmtpSettings
from responder.errors import RelayRefused, RelayUnavailable


class Transport(Protocol):
    def send(self, outgoing: Outgoing) -> None: ...


class SmtpTransport:
    """One connection per response, as a pipe hook only ever sends one."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def send(self, outgoing: Outgoing) -> None:
        """Deliver ``outgoing`` to the relay; RelayUnavailable or RelayRefused when it does not take it."""
        asyncio.run(self.send_async(outgoing))

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            start_tls=s.starttls,
            username=s.username or None,
            password=s.password or None,
            local_hostname=s.hostname or None,
        )

    async def send_async(self, outgoing: Outgoing) -> None:
        client = self._client()
        try:
            await self._mapped(client.connect())
            await self._mapped(self._transaction(client, outgoing))
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _mapped(self, step: Awaitable[object]) -> None:
        """Run one step of the conversation: 5xx becomes RelayRefused, every other fault RelayUnavailable."""
        try:
            await step
        except aiosmtplib.SMTPResponseException as exc:
            _raise_for(exc.code, exc.message, exc)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            _raise_for(refusal.code, refusal.message, exc)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RelayUnavailable(f"relay {self.settings.host}:{self.settings.port}: {exc}") from exc

    @staticmethod
    async def _transaction(client: aiosmtplib.SMTP, outgoing: Outgoing) -> None:
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.supports_extension("dsn"):
            # A response to a response is never wanted.
            rcpt_options.append("NOTIFY=NEVER")
        if not (outgoing.mail_from + outgoing.rcpt_to).isascii():
            if not client.supports_extension("smtputf8"):
                raise RelayRefused(553, "internationalized address but the relay lacks SMTPUTF8")
            mail_options.append("SMTPUTF8")
        await client.sendmail(
            outgoing.mail_from,
            [outgoing.rcpt_to],
            outgoing.as_bytes(),
            mail_options=mail_options,
            rcpt_options=rcpt_options,
        )


def _raise_for(code: int, message: str, cause: BaseException) -> None:
    if 500 <= code < 600:
        raise RelayRefused(code, message) from cause
    raise RelayUnavailable(f"relay answered {code} {message}") from cause
