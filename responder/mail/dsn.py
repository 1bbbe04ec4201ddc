"""Build the RFC 3464 delivery status notification for mail that reached a retired address."""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from responder.mail.headers import header_span
from responder.mail.message import Inbound, canonical_address
from responder.mail.reply import LOOP_HEADER, MAX_SUBJECT, Outgoing, cut_text, literal_text

if TYPE_CHECKING:
    from responder.decide.context import Context

SUBJECT_PREFIX = "Undelivered Mail Returned to Sender"
# Enough for any real header block; a message with a huge one is still reported, cut short.
MAX_HEADERS = 64 * 1024


@dataclass(frozen=True)
class Failure:
    """What the DSN reports about the one recipient."""

    final_recipient: str
    original_recipient: str
    status: str
    diagnostic: str


def address_field(address: str) -> str:
    """``rfc822; addr``, or for an internationalized address RFC 6533's ``utf-8; `` xtext form.

    message/delivery-status is 7-bit: a non-ASCII local part is written with ``\\x{HEX}`` escapes
    rather than as an RFC 2047 encoded word, which no DSN reader would decode.
    """
    if address.isascii():
        return f"rfc822; {address}"
    escaped = "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}" for c in address)
    return f"utf-8; {escaped}"


def original_headers(raw: bytes) -> str:
    """The header block of ``raw`` as text, without the blank line that ends it, cut at MAX_HEADERS."""
    block = raw[: header_span(raw)[0]]
    if len(block) > MAX_HEADERS:
        block = block[:MAX_HEADERS].rpartition(b"\n")[0]
    return block.decode("utf-8", "replace").replace("\r\n", "\n") + "\n"


def bounce_subject(original: str) -> str:
    return cut_text(f"{SUBJECT_PREFIX}: {original}" if original else SUBJECT_PREFIX, MAX_SUBJECT)


def _fields(pairs: list[tuple[str, str]]) -> EmailMessage:
    """One block of message/delivery-status fields (per-message or per-recipient)."""
    block = EmailMessage(policy=policy.SMTP)
    for name, value in pairs:
        block[name] = value
    return block


def compose_dsn(
    inbound: Inbound,
    *,
    failure: Failure,
    text: str,
    from_header: str,
    reporting_mta: str,
    now: dt.datetime,
    hostname: str,
) -> Outgoing:
    """A multipart/report DSN to the envelope sender only, from the null sender (RFC 3464, RFC 6522)."""
    sender = inbound.return_path
    sender = canonical_address(sender) or sender
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = from_header
    msg["To"] = sender
    msg["Subject"] = literal_text(bounce_subject(inbound.subject))
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=hostname)
    if inbound.message_id:
        msg["In-Reply-To"] = inbound.message_id
        msg["References"] = inbound.message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = failure.final_recipient
    msg.set_content(text, charset="utf-8")
    # The text becomes the first part of a multipart whose type is then made the report type.
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", "delivery-status")

    per_recipient = []
    if failure.original_recipient and failure.original_recipient != failure.final_recipient:
        per_recipient.append(("Original-Recipient", address_field(failure.original_recipient)))
    per_recipient += [
        ("Final-Recipient", address_field(failure.final_recipient)),
        ("Action", "failed"),
        ("Status", failure.status),
        ("Diagnostic-Code", f"smtp; 550 {failure.status} {failure.diagnostic}".rstrip()),
    ]
    status = EmailMessage(policy=policy.SMTP)
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(
        [
            _fields([("Reporting-MTA", f"dns; {reporting_mta}"), ("Arrival-Date", format_datetime(now))]),
            _fields(per_recipient),
        ]
    )
    msg.attach(status)

    headers = EmailMessage(policy=policy.SMTP)
    headers.set_content(original_headers(inbound.raw), subtype="rfc822-headers", charset="utf-8")
    del headers["MIME-Version"]
    msg.attach(headers)
    return Outgoing(mail_from="", rcpt_to=sender, message=msg)


def reporting_mta(ctx: Context) -> str:
    """bounce.reporting_mta, else smtp.hostname, else the retired address's domain.

    Not this host's own name: inside a container or behind a relay that is often ``localhost``,
    which tells the sender nothing ("This is the mail system at localhost").
    """
    settings = ctx.settings
    retirement = ctx.retirement
    domain = retirement.address.rpartition("@")[2] if retirement is not None else ""
    return settings.bounce.reporting_mta or settings.smtp.hostname or domain or socket.getfqdn()


def build_bounce(ctx: Context) -> Outgoing:
    """Render the bounce template for the retired recipient of ``ctx`` and compose the DSN."""
    retirement = ctx.retirement
    assert retirement is not None
    settings = ctx.settings
    domain = retirement.address.rpartition("@")[2]
    mta = reporting_mta(ctx)
    from responder.decide.templates import bounce_variables

    sender, subject = ctx.inbound.envelope.sender, ctx.inbound.subject
    text = ctx.services.renderer.render(
        settings.bounce.template, bounce_variables(retirement, sender, subject, mta, ctx.now)
    )
    original = ctx.recipients[1] if len(ctx.recipients) > 1 else ""
    return compose_dsn(
        ctx.inbound,
        failure=Failure(
            final_recipient=retirement.address,
            original_recipient=original,
            status=retirement.safe_status,
            diagnostic=retirement.smtp_text(),
        ),
        text=text,
        from_header=settings.bounce.from_header or f"Mail Delivery System <MAILER-DAEMON@{domain}>",
        reporting_mta=mta,
        now=ctx.now,
        hostname=settings.smtp.hostname or domain,
    )
