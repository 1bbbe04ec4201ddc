"""The hook run as Postfix runs it: exit statuses, replies at a real SMTP server, faults."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample, vacation_set
from tests.sink import SmtpSink

SENDER = "bob@example.org"
RCPT = "alice@example.com"


def test_personal_message_gets_one_reply(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    result = run_hook(config, *deliver_args(SENDER, RCPT, queue_id="4ABC"), stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    [received] = sink.wait_for(1)
    assert received.mail_from == "<>"
    assert received.rcpt_tos == [SENDER]
    assert received.message["Auto-Submitted"] == "auto-replied"


def test_config_missing_defers(tmp_path: Path) -> None:
    result = run_hook(tmp_path / "missing.toml", *deliver_args(SENDER, RCPT), stdin=b"x")
    assert result.returncode == 75
    assert b"does not exist" in result.stderr
