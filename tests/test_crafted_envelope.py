"""Bytes that are not UTF-8 in the envelope, through the hook's argv and the service's LMTP commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import REPO, hook_env, sample, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.sink import SmtpSink

ALICE = "alice@example.com"


def _audit(db_url: str) -> list[tuple[str, str | None, str]]:
    store = Store.open(db_url)
    try:
        return [(row.sender, row.reason, row.detail) for row in reversed(store.decisions(limit=10))]
    finally:
        store.close()


def test_the_hook_records_an_undecodable_sender_as_malformed(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink
) -> None:
    config = make_config()
    vacation_set(config, ALICE, "--message", "away")
    for sender in (b"b\xffob@example.org", b'"b\xffob"@example.org'):
        argv = [sys.executable, "-m", "responder", "--config", str(config), "deliver"]
        result = subprocess.run(
            [*map(str.encode, argv), b"--sender", sender, b"--recipient", ALICE.encode()],
            input=sample("personal.eml"),
            capture_output=True,
            env=hook_env(),
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert b"reason=malformed" in result.stderr
        assert b"Traceback" not in result.stderr
    assert _audit(db_url) == [
        ("b\\xffob@example.org", "malformed", "envelope sender is not a valid address"),
        ('"b\\xffob"@example.org', "malformed", "envelope sender is not a valid address"),
    ]
    assert sink.messages == []


def test_the_service_records_an_undecodable_sender_as_malformed(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, tmp_path: Path
) -> None:
    socket_path = tmp_path / "lmtp.sock"
    config = make_config(server={"socket": f"unix:{socket_path}"})
    vacation_set(config, ALICE, "--message", "away")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        client = LmtpClient(socket_path)
        client.greet()
        client.sock.sendall(b"MAIL FROM:<b\xffob@example.org>\r\n")
        assert client.reply()[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.sock.sendall(sample("personal.eml").replace(b"\n", b"\r\n") + b".\r\n")
        assert client.reply()[0] == 250
        client.close()
    finally:
        assert service.stop() == 0
    assert _audit(db_url) == [("b\\xffob@example.org", "malformed", "envelope sender is not a valid address")]
    assert "Traceback" not in service.log()
    assert sink.messages == []
