"""One message is one message on every path: one key whatever its line ends, one verification."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.dnsserver import DNSServer
from tests.helpers import deliver_args, run_hook, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.sink import SmtpSink

BOB = "bob@example.org"
PATHS = [
    f"{path}-{ending}@example.com" for ending in ("lf", "crlf") for path in ("hook", "thin-client", "lmtp")
]
TEAM = ["alice@example.com", "carol@example.com", "dave@example.com"]


def _message(recipients: list[str]) -> tuple[bytes, str]:
    """A message without Message-ID (its key is the digest of the header block) and that key."""
    header = f"From: Bob <{BOB}>\nTo: {', '.join(recipients)}\nSubject: a question\n\n".encode()
    return header + b"Hello.\n", "sha256:" + hashlib.sha256(header).hexdigest()


@pytest.fixture
def service(make_config: ConfigFactory, tmp_path: Path) -> Iterator[ServiceProcess]:
    socket_path = tmp_path / "lmtp.sock"
    config = make_config(server={"socket": f"unix:{socket_path}"}, reply={"min_interval": "0s"})
    running = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    yield running
    running.stop()


def _message_keys(db_url: str) -> dict[str, str]:
    connection = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        rows = connection.execute(
            "SELECT v.address, c.message_key FROM reply_claims c JOIN vacations v ON v.id = c.vacation_id"
        ).fetchall()
    finally:
        connection.close()
    return dict(rows)


def test_a_message_without_message_id_has_one_key_on_every_path(
    make_config: ConfigFactory, service: ServiceProcess, sink: SmtpSink, db_url: str
) -> None:
    standalone = make_config(reply={"min_interval": "0s"})
    message, key = _message(PATHS)
    for recipient in PATHS:
        path, _, ending = recipient.partition("@")[0].rpartition("-")
        raw = message if ending == "lf" else message.replace(b"\n", b"\r\n")
        vacation_set(standalone, recipient, "--message", "Away.", "--interval", "0s")
        if path == "lmtp":
            client = LmtpClient(service.socket_path)
            client.greet()
            [(code, text)] = client.send_message(BOB, [recipient], raw)
            client.close()
            assert code == 250 and "reply" in text, text
        else:
            config = standalone if path == "hook" else service.config
            result = run_hook(config, *deliver_args(BOB, recipient), stdin=raw)
            assert result.returncode == 0, result.stderr.decode()
    assert len(sink.wait_for(len(PATHS))) == len(PATHS)
    assert service.log().count("action=reply") == 4  # the thin client's and LMTP's went through it
    assert _message_keys(db_url) == dict.fromkeys(PATHS, key)


def test_a_transaction_verifies_its_sender_once_for_all_recipients(
    make_config: ConfigFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    recipients = TEAM
    message, _key = _message(TEAM)
    with DNSServer() as dns_server:
        dns_server.add_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
        socket_path = tmp_path / "lmtp.sock"
        config = make_config(
            server={"socket": f"unix:{socket_path}"},
            verify={"require": "spf", "dns_servers": [dns_server.address]},
        )
        for recipient in recipients:
            vacation_set(config, recipient, "--message", "Away.")
        service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
        try:
            client = LmtpClient(socket_path)
            client.greet()
            replies = client.send_message(
                BOB, recipients, message, xforward="ADDR=192.0.2.1 HELO=mx.example.org"
            )
            client.close()
        finally:
            service.stop()
        assert [code for code, _ in replies] == [250, 250, 250]
        assert all("reply" in text for _, text in replies), replies
        assert len(sink.wait_for(3)) == 3
        # One SPF policy lookup for the message, not one per recipient.
        assert [(q.name, q.rdtype) for q in dns_server.queried("example.org")] == [("example.org", "TXT")]
        assert service.log().count("spf=pass") == 3  # every recipient's decision carries the result
        assert not dns_server.errors
