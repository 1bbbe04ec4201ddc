"""Mail sent over SMTP into a private Postfix that copies it to `responder deliver` as documented."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sink import SmtpSink

from .common import run, snippet, wait_until
from .hook import ResponderInstance
from .mail import (
    assert_reply,
    bounce_message,
    bounces,
    decision,
    garbage,
    message,
    new_sender,
    oversized,
    replies,
)
from .postfix import AUTOREPLY_DOMAIN, POSTFIX, PrivatePostfix, vacation_alias

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture(scope="module")
def postfix(responder: ResponderInstance, sink: SmtpSink) -> Iterator[PrivatePostfix]:
    """One private Postfix per module; alice and bob are on vacation."""
    instance = PrivatePostfix(relay_port=sink.port, executable=responder.executable, config=responder.config)
    try:
        # Replies go back into this Postfix, which relays them to the sink like any
        # outgoing mail: the path a production setup uses.
        responder.configure(smtp_port=instance.port)
        responder.cli("db", "upgrade")
        for address in (ALICE, BOB):
            responder.set_vacation(address)
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def clean_slate(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    """Each test starts with an empty queue and an empty sink."""
    postfix.wait_for_empty_queue()
    sink.clear()


def hook_address(address: str) -> str:
    """The copy of a recipient that the virtual alias hands to the responder transport."""
    return address.replace("@", "@autoreply.", 1)


def settle(postfix: PrivatePostfix, queue_id: str, *recipients: str) -> None:
    """Wait until the hook accepted the message for each recipient and nothing is left in the queue.

    The hook submits its reply before it exits, so once the queue is empty every reply
    has reached the sink.
    """
    for recipient in recipients:
        postfix.wait_for_delivery(queue_id, hook_address(recipient), "sent")
    postfix.wait_for_empty_queue()


def assert_never_bounced(postfix: PrivatePostfix, sink: SmtpSink, queue_id: str) -> None:
    assert bounces(sink) == []
    assert [d for d in postfix.deliveries(queue_id) if d.status == "bounced"] == []


def test_alias_snippet_is_what_the_harness_installs() -> None:
    assert snippet("virtual_alias").strip() == vacation_alias("alice")
    assert snippet("transport").split() == [AUTOREPLY_DOMAIN, "responder:example.test"]


def test_personal_message_gets_one_reply_and_is_still_delivered(
    postfix: PrivatePostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE], message(sender))
    settle(postfix, queue_id, ALICE)

    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert any(queue_id.encode() in m for m in postfix.mailbox("alice")), "normal delivery must go on"
    assert decision(responder, queue_id, ALICE)["action"] == "reply"

    # The same person writing again within the interval gets no second notice.
    second = postfix.send(sender, [ALICE], message(sender, subject="Re: Lunch on Friday?"))
    settle(postfix, second, ALICE)
    assert len(replies(sink)) == 1
    assert decision(responder, second, ALICE)["reason"] == "interval"
    assert_never_bounced(postfix, sink, queue_id)


@pytest.mark.parametrize(
    ("envelope_sender", "make", "reason"),
    [
        pytest.param(
            "announce@lists.remote.test",
            lambda s: message(
                s,
                headers={
                    "List-Id": "Announcements <announce.lists.remote.test>",
                    "List-Unsubscribe": "<mailto:announce-leave@lists.remote.test>",
                },
            ),
            "list-header",
            id="list-mail",
        ),
        pytest.param(
            None,
            lambda s: message(s, subject="Auto: Lunch", headers={"Auto-Submitted": "auto-replied"}),
            "auto-submitted",
            id="auto-reply",
        ),
        pytest.param("", lambda s: bounce_message(ALICE), "null-sender", id="null-sender-bounce"),
    ],
)
def test_robots_get_no_reply(
    postfix: PrivatePostfix,
    sink: SmtpSink,
    responder: ResponderInstance,
    envelope_sender: str | None,
    make: Callable[[str], bytes],
    reason: str,
) -> None:
    sender = new_sender() if envelope_sender is None else envelope_sender
    queue_id = postfix.send(sender, [ALICE], make(sender))
    settle(postfix, queue_id, ALICE)

    assert sink.messages == []
    assert decision(responder, queue_id, ALICE)["reason"] == reason
    assert_never_bounced(postfix, sink, queue_id)


def test_database_fault_defers_without_bounce_then_one_reply(
    postfix: PrivatePostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    autoreply = hook_address(ALICE)
    responder.break_database()
    try:
        queue_id = postfix.send(sender, [ALICE], message(sender))
        postfix.wait_for_delivery(queue_id, autoreply, "deferred")
        postfix.wait_for_delivery(queue_id, ALICE, "sent")

        # Postfix retries within seconds here: a failed retry, still no bounce.
        def attempts() -> int:
            return sum(d.to == autoreply and d.status == "deferred" for d in postfix.deliveries(queue_id))

        wait_until(lambda: attempts() >= 2, 20, "a second deferred delivery attempt")
        queued = postfix.wait_until_deferred(queue_id)
        assert [r["address"] for r in queued["recipients"]] == [autoreply]
        assert "database" in queued["recipients"][0]["delay_reason"]
        assert [m["queue_id"] for m in postfix.queue()] == [queue_id]
        assert sink.messages == []
    finally:
        responder.repair_database()

    postfix.wait_until_deferred(queue_id)
    postfix.flush()
    settle(postfix, queue_id, ALICE)
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert_never_bounced(postfix, sink, queue_id)


def test_garbage_is_neither_answered_nor_bounced(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    queue_id = postfix.send(new_sender(), [ALICE], garbage())
    settle(postfix, queue_id, ALICE)
    assert sink.messages == []
    assert_never_bounced(postfix, sink, queue_id)


def test_oversized_message_is_not_bounced(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    sender = new_sender()
    data = oversized(sender)
    assert len(data) > 20 * 1024 * 1024
    queue_id = postfix.send(sender, [ALICE], data)
    settle(postfix, queue_id, ALICE)
    assert_never_bounced(postfix, sink, queue_id)
    # Answering or not is the hook's decision; more than one reply never is.
    for reply in replies(sink):
        assert_reply(reply, sender=sender, responder_address=ALICE)
    assert len(sink.messages) <= 1


def test_each_of_two_recipients_answers_once(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE, BOB], message(sender, to=f"{ALICE}, {BOB}"))
    settle(postfix, queue_id, ALICE, BOB)

    received = sink.wait_for(2)
    assert len(received) == 2
    by_author = {}
    for reply in received:
        author = ALICE if ALICE in str(reply.message["From"]) else BOB
        assert_reply(reply, sender=sender, responder_address=author)
        by_author[author] = reply
    assert sorted(by_author) == [ALICE, BOB]
    assert_never_bounced(postfix, sink, queue_id)


def test_local_submission_without_client_address_or_helo(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    # sendmail(1) mail has no client: ${client_address} and ${client_helo} expand to "".
    sender = new_sender()
    sendmail = Path("/usr/sbin/sendmail")
    run([sendmail, "-C", str(postfix.etc), "-f", sender, ALICE], input_bytes=message(sender))
    postfix.wait_for_empty_queue()
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert [d for d in postfix.deliveries() if d.status == "bounced"] == []


def test_helo_that_looks_like_an_option_is_not_bounced(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    # The client chooses its HELO name and Postfix passes it on unchanged: written as
    # "--helo ${client_helo}" this would become an option and the hook would exit 2.
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE], message(sender), helo="--queue-id")
    settle(postfix, queue_id, ALICE)
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert_never_bounced(postfix, sink, queue_id)
