"""A private Postfix asks `responder policy` at RCPT: retired recipients are refused, nothing is queued.

The same Postfix is the responder's relay, as in the README: the vacation replies and DSNs the hook
submits from 127.0.0.1 pass the very restrictions the snippet installs.
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policytools import PolicyProcess
from tests.sink import SmtpSink

from .common import account, hook_env, run, snippet
from .hook import ResponderInstance
from .mail import assert_reply, bounces, decision, message, new_sender, replies
from .postfix import AUTOREPLY_DOMAIN, DOMAIN, POSTFIX, POSTMAP, PrivatePostfix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

RETIRED = "carol@example.test"
# Retired too, and routed to the hook only (the README's stage 2): mail that reaches it gets a DSN.
ROUTED = "dave@example.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
TEXT = "Carol has left Example. Please write to bob@example.test instead."

# The README's setup: a directory inside the queue directory (reachable from a chrooted smtpd), owned
# by the responder user and group postfix, set-group-ID so that the socket gets group postfix too.
SOCKET_DIR = "responder"
SOCKET = f"{SOCKET_DIR}/policy"
MAIN_CF = "\n" + snippet("policy-main.cf")


class PolicyPostfix(PrivatePostfix):
    """The private instance with the policy restriction added to main.cf and the socket directory made."""

    def write_config(self) -> None:
        super().write_config()
        with (self.etc / "main.cf").open("a", encoding="utf-8") as main_cf:
            main_cf.write(MAIN_CF)
        with (self.etc / "virtual_alias").open("a", encoding="utf-8") as aliases:
            aliases.write(f"{ROUTED}  {ROUTED.replace(DOMAIN, AUTOREPLY_DOMAIN)}\n")
        run([POSTMAP, "-c", self.etc, f"hash:{self.etc / 'virtual_alias'}"])
        directory = self.socket_path.parent
        directory.mkdir()
        os.chown(directory, account("responder").uid, account("postfix").gid)
        directory.chmod(0o2750)

    @property
    def socket_path(self) -> Path:
        return self.base / "queue" / SOCKET


@pytest.fixture(scope="module")
def postfix(responder: ResponderInstance, sink: SmtpSink) -> Iterator[PolicyPostfix]:
    instance = PolicyPostfix(
        relay_port=sink.port,
        executable=responder.executable,
        config=responder.config,
        vacation_users=("alice",),
    )
    try:
        # The hook's responses go into this Postfix, which relays them to the sink.
        responder.configure(smtp_port=instance.port)
        responder.cli("db", "upgrade")
        responder.cli("bounce", "set", RETIRED, "--message", TEXT)
        responder.cli("bounce", "set", ROUTED, "--message", TEXT)
        responder.set_vacation(ALICE)
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def policy(postfix: PolicyPostfix, responder: ResponderInstance) -> Iterator[PolicyProcess]:
    """The policy server as its own long-running process, as the responder user (as systemd runs it)."""
    user = account("responder")
    server = PolicyProcess(
        responder.config,
        f"unix:{postfix.socket_path}",
        program=[str(responder.executable)],
        user=(user.uid, user.gid),
        env=hook_env(responder.state),
    ).started()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(autouse=True)
def clean_slate(postfix: PolicyPostfix, sink: SmtpSink) -> None:
    postfix.wait_for_empty_queue()
    sink.clear()


def _rcpt(postfix: PrivatePostfix, sender: str, recipients: list[str]) -> list[tuple[int, str]]:
    """MAIL FROM and RCPT TO for each recipient; DATA when one was taken. The RCPT replies."""
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.remote.test", timeout=60) as smtp:
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        replies = [(code, text.decode()) for code, text in (smtp.rcpt(r) for r in recipients)]
        if any(code == 250 for code, _ in replies):
            assert smtp.data(message(sender))[0] == 250
    return replies


def test_retired_recipient_is_refused_at_rcpt_and_nothing_is_queued(
    postfix: PolicyPostfix, policy: PolicyProcess, sink: SmtpSink
) -> None:
    sender = new_sender()
    [(code, text)] = _rcpt(postfix, sender, [RETIRED])
    # REJECT takes access_map_reject_code (554); the enhanced status code and text are ours.
    assert code == 554
    assert text == f"5.1.6 <{RETIRED}>: Recipient address rejected: {TEXT}"
    assert postfix.queue() == []
    assert "reject: RCPT from" in postfix.maillog() and TEXT in postfix.maillog()
    assert f"recipient=<{RETIRED}>" in policy.wait_for_log("action=reject")
    time.sleep(1)
    assert sink.messages == [] and postfix.mailbox("carol") == []


def test_other_recipients_of_the_same_message_are_delivered(
    postfix: PolicyPostfix, policy: PolicyProcess, sink: SmtpSink
) -> None:
    sender = new_sender()
    replies = _rcpt(postfix, sender, [RETIRED, BOB])
    assert [code for code, _ in replies] == [554, 250]
    postfix.wait_for_empty_queue()
    assert any(sender.encode() in m for m in postfix.mailbox("bob"))
    assert not any(sender.encode() in m for m in postfix.mailbox("carol"))
    # The client's own server tells the sender; this one sends no bounce.
    assert bounces(sink) == []


def test_without_the_policy_server_postfix_goes_on(postfix: PolicyPostfix, sink: SmtpSink) -> None:
    """default_action=DUNNO: a stopped policy server costs the first stage, never the mail."""
    sender = new_sender()
    assert [code for code, _ in _rcpt(postfix, sender, [RETIRED])] == [250]
    postfix.wait_for_empty_queue()
    assert any(sender.encode() in m for m in postfix.mailbox("carol"))


def _settle(postfix: PrivatePostfix, queue_id: str, recipient: str) -> None:
    """The hook took its copy and nothing (its own response included) is left in the queue."""
    postfix.wait_for_delivery(queue_id, recipient.replace(DOMAIN, AUTOREPLY_DOMAIN), "sent")
    postfix.wait_for_empty_queue()


def test_vacation_reply_passes_the_policy_restriction(
    postfix: PolicyPostfix, policy: PolicyProcess, sink: SmtpSink, responder: ResponderInstance
) -> None:
    """The reply is submitted from 127.0.0.1 to a remote address: it must be relayed, not refused."""
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE], message(sender))
    _settle(postfix, queue_id, ALICE)
    [reply] = replies(sink)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert decision(responder, queue_id, ALICE)["action"] == "reply"
    assert "Relay access denied" not in postfix.maillog()


def test_dsn_of_the_fallback_passes_the_policy_restriction(
    postfix: PolicyPostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    """Without the policy server (default_action=DUNNO) mail to a retired address reaches the hook."""
    sender = new_sender()
    queue_id = postfix.send(sender, [ROUTED], message(sender, to=ROUTED))
    _settle(postfix, queue_id, ROUTED)
    [dsn] = bounces(sink)
    assert dsn.rcpt_tos == [sender]
    assert dsn.message.get_content_type() == "multipart/report"
    assert decision(responder, queue_id, ROUTED)["action"] == "bounce"
    assert "Relay access denied" not in postfix.maillog()


def test_reply_to_a_retired_address_is_refused_by_the_policy_and_sends_nothing(
    postfix: PolicyPostfix, policy: PolicyProcess, sink: SmtpSink, responder: ResponderInstance
) -> None:
    """A refusal of the recipient itself (5.1.x at RCPT) is a warning, not a setup fault; no bounce."""
    queue_id = postfix.send(RETIRED, [ALICE], message(RETIRED))
    _settle(postfix, queue_id, ALICE)
    record = decision(responder, queue_id, ALICE)
    assert (record["action"], record["reason"]) == ("drop", "relay-refused")
    assert "at RCPT TO: 554 5.1.6" in record["detail"] and "recipient address itself" in record["detail"]
    assert sink.messages == []
