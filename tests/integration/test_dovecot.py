"""Dovecot's Sieve `pipe :copy` (sieve-test and the LDA) running `responder deliver` from its environment."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.sink import SmtpSink

from .dovecot import SIEVE_TEST, SieveSetup
from .hook import ResponderInstance
from .mail import assert_reply, bounce_message, message, new_sender

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SIEVE_TEST.exists(), reason=f"{SIEVE_TEST} is absent (run .ci/install-mail-servers)"
    ),
]

ALICE = "alice@example.test"

# Dovecot's log lines when a pipe program ran, and when it failed (the message is still
# delivered then: implicit keep).
PIPED = "piped message to program `responder'"
PIPE_FAILED = "Terminated with non-zero exit code"


@pytest.fixture(scope="module")
def sieve(responder: ResponderInstance, sink: SmtpSink) -> Iterator[SieveSetup]:
    """The documented Dovecot setup; replies go straight to the sink (no MTA in this module)."""
    responder.configure(smtp_port=sink.port)
    responder.cli("db", "upgrade")
    responder.set_vacation(ALICE)
    setup = SieveSetup(responder.executable, responder.config)
    try:
        yield setup
    finally:
        setup.close()


@pytest.fixture(autouse=True)
def clean_sink(sink: SmtpSink) -> None:
    sink.clear()


def output(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def test_sieve_test_pipe_runs_the_hook_and_replies(sieve: SieveSetup, sink: SmtpSink) -> None:
    sender = new_sender()
    mark = sieve.log_size()
    result = sieve.sieve_test(message(sender), sender=sender, recipient=ALICE, original_recipient=ALICE)
    text = output(result) + sieve.read_log(mark)
    assert result.returncode == 0, text
    assert PIPED in text
    assert PIPE_FAILED not in text
    # The hook sends before it exits, and sieve-test waits for it.
    [reply] = sink.wait_for(1, timeout=2)
    assert_reply(reply, sender=sender, responder_address=ALICE)


def test_lda_delivers_and_replies_once(sieve: SieveSetup, sink: SmtpSink) -> None:
    sender = new_sender()
    mark = sieve.log_size()
    for attempt in range(2):
        result = sieve.deliver(message(sender), sender=sender, recipient=ALICE, original_recipient=ALICE)
        assert result.returncode == 0, output(result) + sieve.read_log(mark)
        assert len(sink.wait_for(1, timeout=2)) == 1, f"attempt {attempt}"
    [reply] = sink.messages
    assert_reply(reply, sender=sender, responder_address=ALICE)
    log = sieve.read_log(mark)
    assert log.count(PIPED) == 2
    assert PIPE_FAILED not in log


def test_lda_null_sender_has_no_sender_variable_and_gets_no_reply(sieve: SieveSetup, sink: SmtpSink) -> None:
    # Dovecot leaves SENDER out of the environment for a null sender (RECIPIENT is
    # there): the hook must read that as "<>", not as a missing argument.
    before = len(sieve.mailbox())
    mark = sieve.log_size()
    result = sieve.deliver(bounce_message(ALICE), sender="", recipient=ALICE, original_recipient=ALICE)
    log = sieve.read_log(mark)
    assert result.returncode == 0, output(result) + log
    assert len(sieve.mailbox()) == before + 1
    assert PIPE_FAILED not in log, log
    assert PIPED in log
    assert sink.wait_for(1, timeout=1) == []


def test_lda_keeps_the_mail_when_the_database_is_down(
    sieve: SieveSetup, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    before = len(sieve.mailbox())
    mark = sieve.log_size()
    responder.break_database()
    try:
        result = sieve.deliver(message(sender), sender=sender, recipient=ALICE, original_recipient=ALICE)
    finally:
        responder.repair_database()
    # `pipe :copy` failing is not a delivery failure: the message lands in the mailbox.
    assert result.returncode == 0, output(result)
    assert len(sieve.mailbox()) == before + 1
    assert f"{PIPE_FAILED} 75" in sieve.read_log(mark)
    assert sink.wait_for(1, timeout=1) == []
