"""Sender verification called the way the rules call it, from the message and its envelope facts."""

from __future__ import annotations

from responder.config.settings import VerifySettings
from responder.mail.message import Envelope, Inbound
from responder.verify.sender import Verification, verify_sender


def verify(
    raw: bytes, sender: str, client_address: str | None, helo: str | None, settings: VerifySettings
) -> Verification:
    envelope = Envelope(sender, "alice@example.com", client_address=client_address or "", helo=helo or "")
    return verify_sender(Inbound(envelope, raw), settings)
