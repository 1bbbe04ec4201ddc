"""DSNs as Postfix gets them: `responder deliver` to a retired address, parsed back field by field."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_admin, run_hook, sample
from tests.sink import Received, SmtpSink

SENDER = "bob@example.org"
RETIRED = "alice@example.com"
MESSAGE = "Alice has left Example Corp.\nPlease write to Bob <bob@example.com> — he took over."

# RFC 3464 section 2.2 (per-message) and 2.3 (per-recipient) fields; extension fields start with X-.
PER_MESSAGE = {"original-envelope-id", "reporting-mta", "dsn-gateway", "received-from-mta", "arrival-date"}
PER_RECIPIENT = {
    "original-recipient",
    "final-recipient",
    "action",
    "status",
    "remote-mta",
    "diagnostic-code",
    "last-attempt-date",
    "final-log-id",
    "will-retry-until",
}
STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def _retire(config: Path, *options: str) -> None:
    result = run_admin(config, "bounce", "set", RETIRED, "--message", MESSAGE, *options)
    assert result.returncode == 0, result.stderr.decode()


def _deliver(config: Path, raw: bytes, sender: str = SENDER, *extra: str) -> str:
    result = run_hook(config, *deliver_args(sender, RETIRED, queue_id="4ABC"), *extra, stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def _fields(block: Message) -> dict[str, str]:
    names = [name.lower() for name in block]
    assert len(names) == len(set(names)), f"a field is repeated: {names}"
    return {name.lower(): str(value) for name, value in block.items()}


def dsn_parts(dsn: EmailMessage) -> tuple[EmailMessage, list[Message], EmailMessage]:
    """The human part, the delivery-status blocks and the returned headers of a multipart/report."""
    human, machine, headers = dsn.iter_parts()
    assert isinstance(human, EmailMessage) and isinstance(headers, EmailMessage)
    assert machine.get_content_type() == "message/delivery-status"
    payload = machine.get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    assert len(blocks) == len(payload)
    return human, blocks, headers


def check_dsn(received: Received, original: bytes, *, status: str, text: str) -> dict[str, str]:
    """Check one received DSN against RFC 3464 / RFC 6522; return its per-recipient fields."""
    # Envelope: from the null sender to the envelope sender only (RFC 3464 section 2, RFC 3834 section 4).
    assert received.mail_from == "<>"
    assert received.rcpt_tos == [SENDER]
    assert b"\r\n" in received.data and all(len(line) <= 998 for line in received.data.split(b"\r\n"))
    dsn = received.message
    assert dsn["To"] == SENDER
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@example.com>"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert "Reply-To" not in dsn
    assert parsedate_to_datetime(str(dsn["Date"])).tzinfo is not None
    assert re.fullmatch(r"<[^<>@\s]+@mx\.example\.net>", str(dsn["Message-ID"]))
    # RFC 6522: multipart/report with report-type=delivery-status; human part, machine part, original.
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, blocks, headers = dsn_parts(dsn)
    assert human.get_content_type() == "text/plain"
    assert text in human.get_content().replace("\r\n", "\n")

    assert len(blocks) == 2, "one per-message block and one recipient"
    per_message, per_recipient = (_fields(block) for block in blocks)
    assert set(per_message) - PER_MESSAGE == set()
    assert set(per_recipient) - PER_RECIPIENT == set()
    status_part = received.data.split(b"Content-Type: message/delivery-status", 1)[1].split(b"\r\n--", 1)[0]
    assert status_part.isascii(), "message/delivery-status is 7-bit"
    # Reporting-MTA is required: mta-name-type "dns" and the host.
    assert per_message["reporting-mta"] == "dns; mx.example.net"
    assert parsedate_to_datetime(per_message["arrival-date"]).tzinfo is not None
    # Per recipient: Final-Recipient, Action and Status are required.
    assert per_recipient["final-recipient"] == f"rfc822; {RETIRED}"
    assert per_recipient["action"] == "failed"
    assert STATUS.match(per_recipient["status"]) and per_recipient["status"] == status
    assert per_recipient["status"].startswith("5."), "failed goes with a permanent status"
    diagnostic_type, _, diagnostic = per_recipient["diagnostic-code"].partition(";")
    assert diagnostic_type == "smtp"
    assert diagnostic.startswith(f" 550 {status} ")

    assert headers.get_content_type() == "text/rfc822-headers"
    returned = message_from_bytes(headers.get_content().encode(), policy=policy.compat32)
    sent = message_from_bytes(original, policy=policy.compat32)
    assert returned.items() == sent.items()
    return per_recipient


def test_verified_sender_gets_an_rfc3464_dsn(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    _retire(config)
    original = sample("personal.eml")
    log = _deliver(config, original)
    assert "action=bounce" in log
    [received] = sink.wait_for(1)
    per_recipient = check_dsn(received, original, status="5.1.6", text=MESSAGE)
    assert per_recipient["diagnostic-code"] == (
        "smtp; 550 5.1.6 Alice has left Example Corp. Please write to Bob <bob@example.com> - he took over."
    )
    assert received.message["Subject"] == "Undelivered Mail Returned to Sender: Café meeting"
    assert received.message["In-Reply-To"] == "<abc123@example.org>"
    audit = run_admin(config, "log").stdout.decode()
    assert "bounce" in audit and SENDER in audit and "4ABC" in audit


def test_configured_status_and_names(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config(
        bounce={"reporting_mta": "bounces.example.net", "from_header": "Postmaster <postmaster@example.com>"}
    )
    _retire(config, "--status", "5.2.1")
    _deliver(config, sample("subject-non-ascii-8bit.eml"))
    [received] = sink.wait_for(1)
    dsn = received.message
    assert dsn["From"] == "Postmaster <postmaster@example.com>"
    _human, status, _headers = dsn_parts(dsn)
    assert str(status[0]["Reporting-MTA"]) == "dns; bounces.example.net"
    assert str(status[1]["Status"]) == "5.2.1"
    assert str(status[1]["Diagnostic-Code"]).startswith("smtp; 550 5.2.1 Alice has left")


@pytest.mark.parametrize("sender", ["", "<>", "MAILER-DAEMON"], ids=["empty", "brackets", "mailer-daemon"])
def test_null_senders_get_nothing(make_config: ConfigFactory, sink: SmtpSink, sender: str) -> None:
    config = make_config()
    _retire(config)
    log = _deliver(config, sample("personal.eml"), sender)
    assert "action=suppress reason=null-sender" in log
    assert sink.received() == []


def test_unverified_sender_gets_nothing(make_config: ConfigFactory, sink: SmtpSink) -> None:
    # SPF without a client address never passes: the sender cannot be verified.
    config = make_config(verify={"require": "spf", "dns_servers": ["127.0.0.1"], "dns_timeout": 1})
    _retire(config)
    log = _deliver(config, sample("personal.eml"))
    assert "action=drop reason=unverified" in log
    assert sink.received() == []


def test_a_retired_address_stays_silent_for_robots_and_lists(
    make_config: ConfigFactory, sink: SmtpSink
) -> None:
    config = make_config()
    _retire(config)
    for name, reason in [
        ("list-id.eml", "list-header"),
        ("auto-submitted-auto-replied.eml", "auto-submitted"),
        ("dsn-report.eml", "report"),
        ("x-auto-response-suppress-autoreply.eml", "auto-response-suppress"),
    ]:
        assert f"reason={reason}" in _deliver(config, sample(name))
    assert sink.received() == []


def test_oof_suppression_does_not_stop_a_bounce(make_config: ConfigFactory, sink: SmtpSink) -> None:
    # The hook's header phase cannot tell a reply from a bounce; it must leave this to the full path.
    config = make_config()
    _retire(config)
    assert "action=bounce" in _deliver(config, sample("x-auto-response-suppress-oof.eml"))
    assert len(sink.wait_for(1)) == 1


def test_relay_down_defers_with_75(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    _retire(config)
    sink.rcpt_reply = "421 4.3.2 shutting down"
    result = run_hook(config, *deliver_args(SENDER, RETIRED), stdin=sample("personal.eml"))
    assert result.returncode == 75
    sink.rcpt_reply = ""
    assert "action=bounce" in _deliver(config, sample("personal.eml"))
    assert len(sink.wait_for(1)) == 1


def test_explain_shows_the_dsn_without_sending(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    _retire(config)
    result = run_hook(
        config, "explain", "--sender", SENDER, "--recipient", RETIRED, stdin=sample("personal.eml")
    )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert out.startswith("action: bounce\n")
    assert f"envelope: MAIL FROM:<> RCPT TO:<{SENDER}>" in out
    assert "Content-Type: message/delivery-status" in out
    assert sink.received() == []


def test_without_a_hostname_the_dsn_names_the_retired_address_domain(
    make_config: ConfigFactory, sink: SmtpSink
) -> None:
    """Not this host's own name, which in a container or behind a relay is often "localhost"."""
    config = make_config(smtp={"hostname": ""})
    _retire(config)
    _deliver(config, sample("personal.eml"))
    [received] = sink.wait_for(1)
    human, status, _headers = dsn_parts(received.message)
    assert human.get_content().startswith("This is the mail system at example.com.\r\n")
    assert str(status[0]["Reporting-MTA"]) == "dns; example.com"
    assert str(received.message["Message-ID"]).endswith("@example.com>")
