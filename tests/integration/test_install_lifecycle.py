"""A real Postfix set up as documented: a broken installation defers, the undo steps leave no trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sink import SmtpSink

from .common import DOC_POSTFIX_DIR, localize, run, snippet
from .hook import ResponderInstance
from .mail import assert_reply, bounces, message, new_sender
from .postfix import AUTOREPLY_DOMAIN, POSTFIX, PrivatePostfix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

ALICE = "alice@example.test"
AUTOREPLY = f"alice@{AUTOREPLY_DOMAIN}"


def installed_package(executable: Path) -> Path:
    """The ``responder`` package directory inside the venv that ``executable`` belongs to."""
    [package] = executable.parent.parent.glob("lib/python3*/site-packages/responder")
    return package


@pytest.fixture(scope="module")
def postfix(responder: ResponderInstance, sink: SmtpSink) -> Iterator[PrivatePostfix]:
    instance = PrivatePostfix(
        relay_port=sink.port,
        executable=responder.executable,
        config=responder.config,
        vacation_users=("alice",),
    )
    try:
        responder.configure(smtp_port=instance.port)
        responder.cli("db", "upgrade")
        responder.set_vacation(ALICE)
        instance.start()
        yield instance
    finally:
        instance.stop()


def test_a_missing_package_directory_defers_then_the_retry_replies(
    postfix: PrivatePostfix, responder: ResponderInstance, sink: SmtpSink
) -> None:
    """The window of ``pip install -U`` in which the package directory is gone."""
    sink.clear()
    sender = new_sender()
    package = installed_package(responder.executable)
    moved = package.with_name("responder.moved")
    package.rename(moved)
    try:
        queue_id = postfix.send(sender, [ALICE], message(sender))
        deferred = postfix.wait_for_delivery(queue_id, AUTOREPLY, "deferred")
        assert "hook exited 1: " in deferred.detail, deferred.detail
        postfix.wait_for_delivery(queue_id, ALICE, "sent")
        queued = postfix.wait_until_deferred(queue_id)
        assert [r["address"] for r in queued["recipients"]] == [AUTOREPLY]
        assert sink.messages == []
    finally:
        moved.rename(package)

    postfix.flush()
    postfix.wait_for_delivery(queue_id, AUTOREPLY, "sent")
    postfix.wait_for_empty_queue()
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert bounces(sink) == []
    assert [d for d in postfix.deliveries(queue_id) if d.status == "bounced"] == []


def postconf(instance: PrivatePostfix, *args: str) -> tuple[str, str]:
    """Output and warnings; the private instance's own paths and log name, which say "responder", elided."""
    result = run(["/usr/sbin/postconf", "-c", instance.etc, *args])
    out = result.stdout.decode().replace(str(instance.base), "BASE").replace(instance.syslog_name, "NAME")
    return out, result.stderr.decode()


def test_the_undo_steps_remove_every_postfix_setting(
    responder: ResponderInstance, sink: SmtpSink, tmp_path: Path
) -> None:
    """Everything the README adds to Postfix (pipe, LMTP, policy, maps), then its undo steps, verbatim."""
    instance = PrivatePostfix(relay_port=sink.port, executable=responder.executable, config=responder.config)
    try:
        instance.start()
        replacements = {DOC_POSTFIX_DIR: f"{instance.etc}/"}
        with (instance.etc / "main.cf").open("a") as main_cf:
            main_cf.write(localize(snippet("policy-main.cf"), replacements))
        with (instance.etc / "master.cf").open("a") as master_cf:
            master_cf.write(localize(snippet("lmtp-master.cf"), replacements))
        (instance.etc / "responder_generic").write_text(snippet("responder_generic"))
        run([POSTFIX, "-c", instance.etc, "reload"])
        before, warnings = postconf(instance, "-n")
        assert warnings == ""
        assert "responder" in before
        services, _ = postconf(instance, "-M")
        assert "responder-lmtp" in services

        steps = localize(snippet("undo-postfix"), replacements)
        # Postfix's commands read MAIL_CONFIG, so the verbatim steps act on this instance only.
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "MAIL_CONFIG": str(instance.etc)}
        run(["/bin/sh", "-ec", steps], env=env, cwd=tmp_path)

        after, warnings = postconf(instance, "-n")
        assert warnings == ""  # no "unused parameter" left behind
        assert "responder" not in after
        assert "autoreply" not in after
        services, warnings = postconf(instance, "-M")
        assert warnings == ""
        assert "responder" not in services
        assert not (instance.etc / "responder_generic").exists()
        for table in ("transport", "virtual_alias"):
            assert "autoreply" not in (instance.etc / table).read_text()
        assert "check_policy_service" not in postconf(instance, "-h", "smtpd_recipient_restrictions")[0]

        # Mail for a former vacation user is delivered to the mailbox and goes nowhere else.
        queue_id = instance.send("carl@remote.test", [ALICE], message("carl@remote.test"))
        instance.wait_for_delivery(queue_id, ALICE, "sent")
        instance.wait_for_empty_queue()
        assert [d.to for d in instance.deliveries(queue_id)] == [ALICE]
    finally:
        instance.stop()
