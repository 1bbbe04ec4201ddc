"""A private Postfix hands the vacation copy to `responder serve` over LMTP, as the README documents.

The service runs as the responder user with group postfix, as the README's systemd unit starts it,
on a UNIX socket in a directory like its RuntimeDirectory: Postfix's lmtp client runs as the postfix
user and connects through the socket's group. Sender verification is on (SPF only, from
a loopback DNS server) so that a reply goes out only when Postfix passed the client address with
XFORWARD; the audit row's queue id is the one Postfix gave the message only when XFORWARD IDENT came
through too.
"""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

from tests.dnsserver import DNSServer
from tests.sink import SmtpSink

from .common import (
    DOC_POSTFIX_DIR,
    Account,
    account,
    hook_env,
    localize,
    remove_tree,
    run,
    shared_tempdir,
    snippet,
    wait_until,
)
from .hook import ResponderInstance
from .mail import assert_reply, bounces, decision, message, new_sender, replies
from .postfix import AUTOREPLY_DOMAIN, POSTFIX, POSTMAP, PrivatePostfix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

ALICE = "alice@example.test"
BOB = "bob@example.test"
AUTOREPLY_ALICE = f"alice@{AUTOREPLY_DOMAIN}"
# Where the README's service listens (RuntimeDirectory=responder).
DOC_SOCKET = "/run/responder/lmtp.sock"
# Mail the tests send comes from 127.0.0.1: only that address may send for the senders' domain.
SENDER_DOMAIN = "remote.test"
SPF_RECORD = "v=spf1 ip4:127.0.0.1 -all"
# How long the service waits for a locked database before answering 451.
BUSY_TIMEOUT = "1s"
LOG_TAIL = 60


def autoreply(address: str) -> str:
    """The copy of a recipient that the virtual alias routes to the LMTP transport."""
    local, _, domain = address.partition("@")
    assert f"autoreply.{domain}" == AUTOREPLY_DOMAIN
    return f"{local}@{AUTOREPLY_DOMAIN}"


class ServiceProcess:
    """``responder serve`` as the README's unit runs it: User=responder, Group=postfix, +responder."""

    def __init__(self, executable: Path, config: Path, log_path: Path, home: Path) -> None:
        self.log_path = log_path
        user = account("responder")
        postfix_group = grp.getgrnam("postfix").gr_gid
        self.log_file: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(executable), "--config", str(config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=hook_env(home),
            cwd=home,
            user=user.uid,
            group=postfix_group,
            extra_groups=[user.gid],
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 30) -> None:
        def logged() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.log()}")
            return text in self.log()

        wait_until(logged, timeout, f"{text!r} in the service log")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout``; the exit status."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        finally:
            self.log_file.close()


class DatabaseLock:
    """An exclusive SQLite lock held by another process of the responder user, until released.

    The fault a warm service meets: its pooled connections stay open, so taking the file's
    permissions away (as the pipe test does) would not reliably reach it, while a lock held past
    ``database.busy_timeout`` (a long migration, a backup) does.
    """

    SCRIPT = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "db.execute('ROLLBACK')\n"
    )

    def __init__(self, database: Path, user: Account, home: Path) -> None:
        self.process = subprocess.Popen(
            ["/usr/bin/python3", "-c", self.SCRIPT, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=hook_env(home),
            cwd=home,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
        )
        try:
            assert self.process.stdout is not None
            assert self.process.stdout.readline() == b"locked\n", "the lock could not be taken"
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class LmtpPostfix(PrivatePostfix):
    """The private instance with the README's LMTP service, generic map and transport instead of the pipe."""

    def __init__(
        self,
        *,
        socket_path: Path,
        relay_port: int,
        executable: Path,
        config: Path,
        vacation_users: Sequence[str],
    ) -> None:
        super().__init__(
            relay_port=relay_port, executable=executable, config=config, vacation_users=vacation_users
        )
        self.socket_path = socket_path

    def write_config(self) -> None:
        super().write_config()
        replacements = {DOC_SOCKET: str(self.socket_path), DOC_POSTFIX_DIR: f"{self.etc}/"}
        with (self.etc / "master.cf").open("a", encoding="utf-8") as master_cf:
            master_cf.write(localize(snippet("lmtp-master.cf"), replacements))
        (self.etc / "responder_generic").write_text(localize(snippet("responder_generic"), replacements))
        (self.etc / "transport").write_text(localize(snippet("lmtp-transport"), replacements))
        run([POSTMAP, "-c", self.etc, f"hash:{self.etc / 'transport'}"])


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add_txt(SENDER_DOMAIN, SPF_RECORD)
        yield server


@pytest.fixture(scope="module")
def runtime_dir() -> Iterator[Path]:
    """Like systemd's RuntimeDirectory=responder with mode 0750 for User=responder, Group=postfix."""
    base = shared_tempdir("responder-lmtp-")
    directory = base / "responder"
    directory.mkdir()
    os.chown(directory, account("responder").uid, grp.getgrnam("postfix").gr_gid)
    directory.chmod(0o750)
    try:
        yield directory
    finally:
        remove_tree(base)


def write_config(responder: ResponderInstance, smtp_port: int, dns: DNSServer, socket_path: Path) -> None:
    responder.config.write_text(
        "[database]\n"
        f'url = "sqlite:///{responder.database}"\n'
        f'busy_timeout = "{BUSY_TIMEOUT}"\n'
        "\n[smtp]\n"
        'host = "127.0.0.1"\n'
        f"port = {smtp_port}\n"
        'timeout = "10s"\n'
        'hostname = "responder.example.test"\n'
        "\n[verify]\n"
        'require = "spf"\n'
        f'dns_servers = ["{dns.address}"]\n'
        'dns_timeout = "2s"\n'
        'budget = "4s"\n'
        "\n[server]\n"
        f'socket = "unix:{socket_path}"\n'
        "workers = 2\n"
    )
    responder.config.chmod(0o644)


@pytest.fixture(scope="module")
def postfix(
    responder: ResponderInstance, sink: SmtpSink, dns: DNSServer, runtime_dir: Path
) -> Iterator[LmtpPostfix]:
    socket_path = runtime_dir / "lmtp.sock"
    instance = LmtpPostfix(
        socket_path=socket_path,
        relay_port=sink.port,
        executable=responder.executable,
        config=responder.config,
        vacation_users=("alice", "bob"),
    )
    try:
        write_config(responder, instance.port, dns, socket_path)
        responder.cli("db", "upgrade")
        for address in (ALICE, BOB):
            responder.set_vacation(address)
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def service(postfix: LmtpPostfix, responder: ResponderInstance) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        responder.executable, responder.config, responder.base / "service.log", responder.state
    )
    try:
        process.wait_log("listening for LMTP")
        yield process
    finally:
        status = process.stop()
        assert status == 0, f"the service exited with {status}:\n{process.log()}"


@pytest.fixture(autouse=True)
def clean_slate(postfix: LmtpPostfix, service: ServiceProcess, sink: SmtpSink) -> Iterator[None]:
    """An empty queue and sink to start with; the service's log shown with a failure's output."""
    postfix.wait_for_empty_queue()
    sink.clear()
    yield
    print("service log (tail):\n" + "\n".join(service.log().splitlines()[-LOG_TAIL:]))


def settle(postfix: PrivatePostfix, queue_id: str, *recipients: str) -> None:
    """The service accepted the copies and the queue is empty: any reply has reached the sink."""
    for recipient in recipients or (ALICE,):
        postfix.wait_for_delivery(queue_id, autoreply(recipient), "sent")
    postfix.wait_for_empty_queue()


def assert_never_bounced(postfix: PrivatePostfix, sink: SmtpSink, queue_id: str) -> None:
    assert bounces(sink) == []
    assert [d for d in postfix.deliveries(queue_id) if d.status == "bounced"] == []


def test_generic_map_gives_the_real_address(postfix: LmtpPostfix) -> None:
    table = f"regexp:{postfix.etc / 'responder_generic'}"
    found = run([POSTMAP, "-c", postfix.etc, "-q", AUTOREPLY_ALICE, table]).stdout.decode().strip()
    assert found == ALICE


def test_socket_belongs_to_responder_and_group_postfix(postfix: LmtpPostfix) -> None:
    status = postfix.socket_path.stat()
    assert status.st_uid == account("responder").uid
    assert status.st_gid == grp.getgrnam("postfix").gr_gid
    assert status.st_mode & 0o777 == 0o660


def test_personal_message_gets_one_reply_decided_for_the_real_address(
    postfix: LmtpPostfix, service: ServiceProcess, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE], message(sender))
    settle(postfix, queue_id)

    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    assert any(queue_id.encode() in m for m in postfix.mailbox("alice")), "normal delivery must go on"
    [delivery] = [d for d in postfix.deliveries(queue_id) if d.to == AUTOREPLY_ALICE]
    assert str(postfix.socket_path) in delivery.relay, delivery
    # Found by the queue id Postfix gave the message: XFORWARD IDENT reached the service.
    record = decision(responder, queue_id, ALICE)
    assert record["action"] == "reply"
    # The engine decided for the user's real address (the generic map rewrote RCPT TO) ...
    assert record["recipient"] == ALICE
    assert f"recipient=<{ALICE}> action=reply" in service.log()
    # ... and SPF passed for 127.0.0.1: the client address came with XFORWARD ADDR.
    assert "spf=pass" in record["detail"], record
    assert_never_bounced(postfix, sink, queue_id)


def test_list_mail_gets_no_reply(postfix: LmtpPostfix, sink: SmtpSink, responder: ResponderInstance) -> None:
    sender = f"announce@lists.{SENDER_DOMAIN}"
    headers = {
        "List-Id": "Announcements <announce.lists.remote.test>",
        "List-Unsubscribe": "<mailto:announce-leave@lists.remote.test>",
    }
    queue_id = postfix.send(sender, [ALICE], message(sender, headers=headers))
    settle(postfix, queue_id)

    assert sink.messages == []
    record = decision(responder, queue_id, ALICE)
    assert (record["recipient"], record["reason"]) == (ALICE, "list-header")
    assert_never_bounced(postfix, sink, queue_id)


def test_each_of_two_recipients_answers_once(
    postfix: LmtpPostfix, sink: SmtpSink, responder: ResponderInstance
) -> None:
    # No recipient limit for the LMTP service: Postfix may hand both copies over in one transaction.
    sender = new_sender()
    queue_id = postfix.send(sender, [ALICE, BOB], message(sender, to=f"{ALICE}, {BOB}"))
    settle(postfix, queue_id, ALICE, BOB)

    received = sink.wait_for(2)
    assert len(received) == 2
    by_author = {ALICE if ALICE in str(r.message["From"]) else BOB: r for r in received}
    assert sorted(by_author) == [ALICE, BOB]
    for author, reply in by_author.items():
        assert_reply(reply, sender=sender, responder_address=author)
    for address in (ALICE, BOB):
        record = decision(responder, queue_id, address)
        assert (record["recipient"], record["action"]) == (address, "reply")
    assert_never_bounced(postfix, sink, queue_id)


def test_database_fault_defers_without_bounce_then_one_reply(
    postfix: LmtpPostfix, service: ServiceProcess, sink: SmtpSink, responder: ResponderInstance
) -> None:
    sender = new_sender()
    lock = DatabaseLock(responder.database, responder.user, responder.state)
    try:
        queue_id = postfix.send(sender, [ALICE], message(sender))
        postfix.wait_for_delivery(queue_id, AUTOREPLY_ALICE, "deferred")
        postfix.wait_for_delivery(queue_id, ALICE, "sent")

        def attempts() -> int:
            return sum(
                d.to == AUTOREPLY_ALICE and d.status == "deferred" for d in postfix.deliveries(queue_id)
            )

        wait_until(lambda: attempts() >= 2, 30, "a second deferred delivery attempt")
        queued = postfix.wait_until_deferred(queue_id)
        [recipient] = queued["recipients"]
        assert recipient["address"] == AUTOREPLY_ALICE
        assert "451 4.3.0" in recipient["delay_reason"] and "database" in recipient["delay_reason"]
        assert [m["queue_id"] for m in postfix.queue()] == [queue_id]
        assert sink.messages == []
    finally:
        lock.release()

    postfix.wait_until_deferred(queue_id)
    postfix.flush()
    settle(postfix, queue_id)
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    time.sleep(0.5)
    assert len(replies(sink)) == 1
    assert decision(responder, queue_id, ALICE)["action"] == "reply"
    assert_never_bounced(postfix, sink, queue_id)


def test_the_service_stops_cleanly_and_removes_its_socket(
    postfix: LmtpPostfix, service: ServiceProcess
) -> None:
    # Last in the module: the fixture would stop it anyway; here the outcome is checked.
    assert service.stop() == 0, service.log()
    assert not postfix.socket_path.exists()
