"""Test messages and the checks on what reached the sink: replies versus bounces, and the audit trail."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any

from tests.sink import Received, SmtpSink

from .hook import ResponderInstance


def new_sender() -> str:
    """A sender no vacation has answered yet, so reply intervals never couple two tests."""
    return f"s-{uuid.uuid4().hex[:12]}@remote.test"


def message(
    sender: str,
    to: str = "alice@example.test",
    subject: str = "Lunch on Friday?",
    headers: dict[str, str] | None = None,
    body: str = "Shall we meet at noon?\r\n",
) -> bytes:
    """A plain message as a person's mail client writes it, plus any ``headers``."""
    lines = {
        "From": f"Sam Sender <{sender}>",
        "To": to,
        "Subject": subject,
        "Date": format_datetime(datetime.now(UTC)),
        "Message-ID": f"<{uuid.uuid4().hex}@remote.test>",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=utf-8",
        **(headers or {}),
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
    return (head + "\r\n" + body).encode()


def bounce_message(recipient: str) -> bytes:
    """A delivery status notification as a remote MTA sends it, with the null sender."""
    boundary = "dsn-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.remote.test\r\n\r\n"
        f"Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"--{boundary}--\r\n"
    )
    return message(
        "MAILER-DAEMON@remote.test",
        to=recipient,
        subject="Undelivered Mail Returned to Sender",
        headers={
            "From": "Mail Delivery System <MAILER-DAEMON@remote.test>",
            "Auto-Submitted": "auto-replied",
            "Content-Type": f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        },
        body=body,
    )


def garbage(size: int = 8192, seed: int = 3834) -> bytes:
    """Random bytes (fixed seed, so a failure reproduces) that parse as no sane message."""
    return random.Random(seed).randbytes(size)


def oversized(sender: str, megabytes: int = 20) -> bytes:
    """A personal message to alice whose body alone is ``megabytes`` MB of base64-looking lines."""
    line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line) + 1)
    return message(sender, subject="The whole archive", body=body)


def is_bounce(received: Received) -> bool:
    """A delivery status notification (what Postfix sends to the envelope sender when the hook fails)."""
    parsed = received.message
    return parsed.get_content_type() == "multipart/report" or "mailer-daemon" in str(parsed["From"]).lower()


def bounces(sink: SmtpSink) -> list[Received]:
    with sink.lock:
        return [m for m in sink.messages if is_bounce(m)]


def replies(sink: SmtpSink) -> list[Received]:
    with sink.lock:
        return [m for m in sink.messages if not is_bounce(m)]


def addresses(value: object) -> list[str]:
    return [address.lower() for _, address in getaddresses([str(value)]) if address]


def assert_reply(received: Received, *, sender: str, responder_address: str) -> None:
    """The RFC 3834 shape of a vacation reply as it arrived at the far end."""
    parsed = received.message
    # aiosmtpd records MAIL FROM:<> as "<>".
    assert received.mail_from in ("", "<>"), "a vacation reply must use the null envelope sender"
    assert [r.lower() for r in received.rcpt_tos] == [sender.lower()]
    assert addresses(parsed["To"]) == [sender.lower()]
    assert responder_address in addresses(parsed["From"])
    assert str(parsed["Auto-Submitted"]).strip().lower() == "auto-replied"
    assert parsed["In-Reply-To"], "a reply must reference the message it answers"
    body = parsed.get_body(("plain",))
    assert body is not None, "a reply must have a text/plain body"
    assert "I am away" in body.get_content()


def decision(responder: ResponderInstance, queue_id: str, recipient: str) -> dict[str, Any]:
    """The audit record `responder log --json` holds for one queue id and recipient."""
    out = responder.cli("log", "--json", "--recipient", recipient, "--limit", "200").stdout.decode()
    text = out.strip()
    records: list[Any]
    if text.startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    matching = [r for r in records if isinstance(r, dict) and queue_id in map(str, r.values())]
    assert matching, f"no audit record for queue id {queue_id} in: {out}"
    return dict(matching[0])
