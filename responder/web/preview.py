"""The reply a vacation would send, built by the engine's own compose path for a sample message."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.utils import format_datetime, make_msgid

from responder.config.settings import Settings
from responder.decide.context import Context, Services
from responder.decide.engine import build_reply
from responder.decide.records import Vacation
from responder.decide.templates import SAMPLE_SENDER, SAMPLE_SUBJECT, RenderError
from responder.mail.message import Envelope, Inbound

# The headers a reader looks at first, in this order; the rest follow as composed.
_FIRST = ("From", "To", "Subject", "Date")


@dataclass(frozen=True)
class Preview:
    """The composed reply: its envelope, its header fields as decoded text, its body."""

    mail_from: str
    rcpt_to: str
    headers: tuple[tuple[str, str], ...]
    subject: str
    body: str


def sample_message(recipient: str, now: dt.datetime) -> bytes:
    """A plain personal message to ``recipient``, as a sender would write one."""
    lines = [
        f"From: Sample Sender <{SAMPLE_SENDER}>",
        f"To: <{recipient}>",
        f"Subject: {SAMPLE_SUBJECT}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {make_msgid(domain='example.org')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Hello, are you there?",
        "",
    ]
    return "\r\n".join(lines).encode()


def preview_reply(settings: Settings, vacation: Vacation, now: dt.datetime) -> Preview:
    """The reply to a sample message as ``build_reply`` composes it; RenderError when the template fails.

    Only the rules are skipped (a preview answers "what would they read", not "would they get it"):
    the template, the interval it names, the subject rule and every header come from the engine.
    """
    inbound = Inbound(
        Envelope(sender=SAMPLE_SENDER, recipient=vacation.address), sample_message(vacation.address, now)
    )
    services = Services(settings, clock=lambda: now)
    ctx = Context(inbound, services, dry_run=True)
    # The vacation being edited, not the stored one: a cached_property is set on the instance.
    ctx.vacation = vacation
    outgoing = build_reply(ctx)
    message = outgoing.message
    fields = [
        (name, str(value))
        for name, value in message.items()
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version")
    ]
    ordered = sorted(fields, key=lambda f: _FIRST.index(f[0]) if f[0] in _FIRST else len(_FIRST))
    body = message.get_content()
    assert isinstance(body, str)
    return Preview(
        mail_from=outgoing.mail_from,
        rcpt_to=outgoing.rcpt_to,
        headers=tuple(ordered),
        subject=str(message["Subject"]),
        body=body,
    )


__all__ = ["Preview", "RenderError", "preview_reply", "sample_message"]
