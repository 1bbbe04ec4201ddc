"""The verification gate end to end: the hook as Postfix runs it, a real DNS server, a real relay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.dnsserver import DNSServer
from tests.helpers import deliver_args, run_admin, run_hook, vacation_set
from tests.sink import SmtpSink

RCPT = "alice@example.com"
GOOD_IP = "192.0.2.10"
FORGED_IP = "203.0.113.66"


def _message(sender: str, number: int = 1, extra: str = "") -> bytes:
    return (
        f"{extra}From: {sender}\r\nTo: {RCPT}\r\nSubject: hello {number}\r\n"
        f"Message-ID: <v{number}@example.org>\r\n\r\nHi.\r\n"
    ).encode()


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add_txt("example.org", f"v=spf1 ip4:{GOOD_IP} -all")
        server.add_txt("soft.example", "v=spf1 ~all")
        server.silence("silent.example")
        yield server


@pytest.fixture
def config(make_config: ConfigFactory, dns_server: DNSServer) -> Path:
    path = make_config(
        verify={
            "require": "aligned",
            "dns_servers": [dns_server.address],
            "dns_timeout": "1s",
            "budget": "2s",
            "trusted_authserv_ids": ["mx.example.com"],
        }
    )
    vacation_set(path, RCPT, "--message", "I am away.")
    return path


def _deliver(config: Path, sender: str, message: bytes, client: str = "") -> tuple[int, str]:
    args = deliver_args(sender, RCPT, client_address=client, helo="mail.example.org")
    result = run_hook(config, *args, stdin=message)
    return result.returncode, result.stderr.decode()


def _last_audit(config: Path) -> str:
    return run_admin(config, "log", "--limit", "1").stdout.decode()


def test_spf_pass_gets_the_reply(config: Path, sink: SmtpSink) -> None:
    code, log = _deliver(config, "bob@example.org", _message("bob@example.org"), GOOD_IP)
    assert code == 0
    assert "action=reply" in log and "spf=pass" in log
    assert len(sink.wait_for(1)) == 1
    assert "spf=pass" in _last_audit(config)


def test_forged_sender_gets_nothing_and_the_audit_says_why(config: Path, sink: SmtpSink) -> None:
    code, log = _deliver(config, "bob@example.org", _message("bob@example.org"), FORGED_IP)
    assert code == 0
    assert "action=drop reason=unverified" in log
    assert "spf=fail" in log
    assert sink.received() == []
    assert "unverified" in _last_audit(config) and "spf=fail" in _last_audit(config)


def test_forgery_does_not_use_up_the_interval(config: Path, sink: SmtpSink) -> None:
    assert _deliver(config, "bob@example.org", _message("bob@example.org", 1), FORGED_IP)[0] == 0
    code, log = _deliver(config, "bob@example.org", _message("bob@example.org", 2), GOOD_IP)
    assert code == 0 and "action=reply" in log
    assert len(sink.wait_for(1)) == 1


def test_softfail_and_missing_client_address(config: Path, sink: SmtpSink) -> None:
    code, log = _deliver(config, "carol@soft.example", _message("carol@soft.example"), GOOD_IP)
    assert (code, "spf=softfail" in log, "reason=unverified" in log) == (0, True, True)
    code, log = _deliver(config, "bob@example.org", _message("bob@example.org", 2))
    assert (code, "spf=skipped" in log, "reason=unverified" in log) == (0, True, True)
    assert sink.received() == []


def test_silent_dns_is_a_drop_within_the_budget(config: Path, sink: SmtpSink) -> None:
    started = time.monotonic()
    code, log = _deliver(config, "dave@silent.example", _message("dave@silent.example"), GOOD_IP)
    elapsed = time.monotonic() - started
    assert code == 0
    assert "reason=unverified" in log
    assert elapsed < 2 + 1 + 2  # budget + 1 s + the interpreter's own start-up
    assert sink.received() == []


def test_trusted_authentication_results_need_no_dns(
    config: Path, sink: SmtpSink, dns_server: DNSServer
) -> None:
    header = "Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=erin@partner.example\r\n"
    code, log = _deliver(config, "erin@partner.example", _message("erin@partner.example", extra=header))
    assert code == 0 and "action=reply" in log
    assert dns_server.queried("partner.example") == []
    assert len(sink.wait_for(1)) == 1


def test_untrusted_authentication_results_are_ignored(config: Path, sink: SmtpSink) -> None:
    header = "Authentication-Results: evil.example; spf=pass smtp.mailfrom=frank@partner.example\r\n"
    code, log = _deliver(config, "frank@partner.example", _message("frank@partner.example", extra=header))
    assert code == 0 and "reason=unverified" in log
    assert sink.received() == []


def test_list_mail_costs_no_dns(config: Path, dns_server: DNSServer) -> None:
    message = _message("bob@example.org", extra="List-Id: <team.example.org>\r\n")
    code, log = _deliver(config, "bob@example.org", message, GOOD_IP)
    assert code == 0 and "reason=list-header" in log
    assert dns_server.queries == []
