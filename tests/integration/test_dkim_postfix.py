"""A signed reply relayed by a real Postfix reaches the sink with its DKIM signatures still valid."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.dkimtools import only_signature, record_from_output, signatures
from tests.opendkim import TESTMSG, missing, run_opendkim
from tests.sink import SmtpSink

from .common import HOOK_USER, account
from .hook import ResponderInstance
from .mail import decision, message, new_sender
from .postfix import DOMAIN, POSTFIX, PrivatePostfix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

ALICE = f"alice@{DOMAIN}"


@pytest.fixture(scope="module")
def records(responder: ResponderInstance, postfix: PrivatePostfix) -> dict[str, str]:
    """Keys made by ``responder dkim keygen`` as the hook user; their records, by name."""
    keys = responder.base / "dkim"
    user = account(HOOK_USER)
    made = {}
    for selector, algorithm in (("responder", "rsa"), ("responder-ed25519", "ed25519")):
        out = responder.cli("dkim", "keygen", DOMAIN, "--algorithm", algorithm).stdout.decode()
        made[f"{selector}._domainkey.{DOMAIN}"] = record_from_output(out)
    key = keys / DOMAIN / "responder.rsa.pem"
    assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (user.uid, 0o600)
    return made


@pytest.fixture(scope="module")
def postfix(responder: ResponderInstance, sink: SmtpSink) -> Iterator[PrivatePostfix]:
    instance = PrivatePostfix(relay_port=sink.port, executable=responder.executable, config=responder.config)
    try:
        responder.configure(smtp_port=instance.port)
        # keys_dir belongs to the hook user: keygen gives the keys its owner.
        keys = responder.base / "dkim"
        keys.mkdir(mode=0o700)
        user = account(HOOK_USER)
        os.chown(keys, user.uid, user.gid)
        with responder.config.open("a") as config:
            config.write(
                f'\n[dkim]\nkeys_dir = "{responder.base / "dkim"}"\ned25519 = true\nrequire = true\n'
            )
        responder.cli("db", "upgrade")
        responder.set_vacation(ALICE, "Bin weg, zurück am Montag.")
        instance.start()
        yield instance
    finally:
        instance.stop()


def _dnsfunc(records: dict[str, str]) -> object:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        text = records.get(name.decode().rstrip("."))
        return text.encode() if text is not None else None

    return lookup


def test_postfix_relays_the_signed_reply_unchanged(
    records: dict[str, str], postfix: PrivatePostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    import dkim

    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE], message(sender))
    postfix.wait_for_delivery(queue_id, ALICE.replace("@", "@autoreply."), "sent")
    postfix.wait_for_empty_queue()
    [reply] = sink.wait_for(1)
    assert decision(responder, queue_id, ALICE)["action"] == "reply"
    # Postfix added its Received field on top; everything signed arrives as signed.
    assert reply.data.startswith(b"Received: ")
    rsa, ed = signatures(reply.data)
    assert (rsa[b"a"], rsa[b"d"], ed[b"a"]) == (b"rsa-sha256", DOMAIN.encode(), b"ed25519-sha256")
    lookup = _dnsfunc(records)
    assert dkim.DKIM(reply.data).verify(0, dnsfunc=lookup)
    assert dkim.DKIM(reply.data).verify(1, dnsfunc=lookup)
    reason = missing()
    if reason is not None:
        if os.environ.get("RESPONDER_TEST_INTEGRATION") == "require":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    for index in (0, 1):
        result = run_opendkim(
            [TESTMSG], {k: [v] for k, v in records.items()}, only_signature(reply.data, index)
        )
        assert result.returncode == 0, result


def test_require_without_a_key_for_the_from_domain_sends_nothing(
    records: dict[str, str], postfix: PrivatePostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    other = f"bob@{DOMAIN}"
    responder.cli("vacation", "set", other, "--message", "away", "--from", "Bob <bob@elsewhere.test>")
    queue_id = postfix.send(sender, [other], message(sender, to=other))
    postfix.wait_for_delivery(queue_id, other.replace("@", "@autoreply."), "sent")
    postfix.wait_for_empty_queue()
    row = decision(responder, queue_id, other)
    assert (row["action"], row["reason"]) == ("drop", "unsigned")
    assert "no rsa key" in row["detail"]
    assert [m for m in sink.received() if sender in m.rcpt_tos] == []
