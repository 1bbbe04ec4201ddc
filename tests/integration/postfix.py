"""A private Postfix instance (own config, queue, data dirs and port) wired to the hook as documented."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    DOC_CONFIG,
    DOC_EXECUTABLE,
    DOC_POSTFIX_DIR,
    account,
    free_port,
    localize,
    remove_tree,
    run,
    shared_tempdir,
    snippet,
    wait_until,
)

POSTFIX = Path("/usr/sbin/postfix")
POSTQUEUE = Path("/usr/sbin/postqueue")
POSTMAP = Path("/usr/sbin/postmap")

DOMAIN = "example.test"
AUTOREPLY_DOMAIN = f"autoreply.{DOMAIN}"
MAILBOX_USERS = ("alice", "bob", "carol")

# Everything a private instance needs besides the documented snippet. Debian's own
# master.cf chroots most daemons into the queue directory, which a throwaway queue
# directory cannot support, so every service here runs unchrooted.
_MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
# A unique name keeps this instance's lines apart from any other Postfix on the machine.
syslog_name = {syslog_name}
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
# No local(8) delivery at all: local mail would need /etc/aliases and root's mailbox.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Everything not hosted here (replies and any bounce) goes to the test's sink.
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
smtpd_error_sleep_time = 0
# Room for the oversized-message test (20 MB).
message_size_limit = 41943040
virtual_mailbox_limit = 0
# Retry deferred mail within seconds, so the defer-then-recover test stays short. Not
# 1s: the queue manager caches the time, so a 1s backoff can make the message due
# again before the delivery agent has unlocked it; the scan then finds it locked and
# parks it for 60 seconds ("skipped, still being delivered").
queue_run_delay = 1s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
# A delay warning goes to the envelope sender: backscatter the tests must not see.
delay_warning_time = 0h
default_process_limit = 20
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {base}/mail
virtual_mailbox_maps = texthash:{etc}/virtual_mailbox
virtual_uid_maps = static:{mail_uid}
virtual_gid_maps = static:{mail_gid}
"""

_DELIVERY = re.compile(
    r"\]: (?P<queue_id>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig_to>[^>]*)>)?,"
    r" relay=(?P<relay>[^,]+),.* status=(?P<status>\w+) \((?P<detail>.*)\)$"
)
_QUEUED_AS = re.compile(rb"queued as (?P<queue_id>[0-9A-Za-z]+)")


def vacation_alias(user: str) -> str:
    """The virtual_alias line that keeps normal delivery and copies the mail to the hook."""
    return f"{user}@{DOMAIN}  {user}@{DOMAIN}, {user}@{AUTOREPLY_DOMAIN}"


@dataclass(frozen=True)
class Delivery:
    """One ``to=<...>`` result line of the mail log."""

    queue_id: str
    to: str
    orig_to: str | None
    relay: str
    status: str
    detail: str


class PrivatePostfix:
    """Run ``start()`` then send mail with ``send()``; ``stop()`` removes every trace.

    ``executable`` and ``config`` replace the documented hook paths in the master.cf
    snippet, so a stand-in script can take the hook's place.
    """

    def __init__(
        self,
        *,
        relay_port: int,
        executable: Path,
        config: Path,
        vacation_users: Sequence[str] = ("alice", "bob"),
    ) -> None:
        self.base = shared_tempdir("responder-postfix-")
        self.etc = self.base / "etc"
        self.port = free_port()
        self.relay_port = relay_port
        self.executable = executable
        self.config = config
        self.vacation_users = tuple(vacation_users)
        self.syslog_name = f"responder-test-{self.base.name}"
        self.started = False

    # -- lifecycle -----------------------------------------------------------------

    def write_config(self) -> None:
        self.etc.mkdir()
        # Postfix creates the queue's subdirectories itself but wants the top one to exist.
        (self.base / "queue").mkdir()
        mail = self.base / "mail"
        mail.mkdir()
        mail_owner = account("nobody")
        os.chown(mail, mail_owner.uid, mail_owner.gid)
        replacements = {
            DOC_EXECUTABLE: str(self.executable),
            DOC_CONFIG: str(self.config),
            DOC_POSTFIX_DIR: f"{self.etc}/",
        }
        main_cf = _MAIN_CF.format(
            base=self.base,
            etc=self.etc,
            syslog_name=self.syslog_name,
            domain=DOMAIN,
            relay_port=self.relay_port,
            mail_uid=mail_owner.uid,
            mail_gid=mail_owner.gid,
        )
        (self.etc / "main.cf").write_text(main_cf + localize(snippet("main.cf"), replacements))
        master_cf = _MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        (self.etc / "master.cf").write_text(master_cf + localize(snippet("master.cf"), replacements))
        (self.etc / "virtual_mailbox").write_text(
            "".join(f"{user}@{DOMAIN}  {user}/\n" for user in MAILBOX_USERS)
        )
        (self.etc / "transport").write_text(localize(snippet("transport"), replacements))
        (self.etc / "virtual_alias").write_text(
            "".join(vacation_alias(user) + "\n" for user in self.vacation_users)
        )
        for table in ("transport", "virtual_alias"):
            run([POSTMAP, "-c", self.etc, f"hash:{self.etc / table}"])

    def start(self) -> PrivatePostfix:
        self.write_config()
        # `check` creates the queue and data directories with the owners and modes
        # Postfix insists on, and reports configuration mistakes before start.
        self._postfix("check")
        self._postfix("start")
        self.started = True
        wait_until(self._accepting, 20, f"the private Postfix to listen on 127.0.0.1:{self.port}")
        return self

    def _postfix(self, command: str) -> None:
        # With maillog_file set, Postfix's commands log their errors there, not to stderr.
        result = run([POSTFIX, "-c", self.etc, command], check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix {command} exited {result.returncode}:\n{self.maillog()[-4000:]}")

    def _accepting(self) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as smtp:
                return smtp.noop()[0] == 250
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the instance, kill anything of it still alive, remove its directories."""
        try:
            if self.started:
                run([POSTFIX, "-c", self.etc, "stop"], check=False, timeout=30)
                deadline = time.monotonic() + 10
                while self._own_processes() and time.monotonic() < deadline:
                    time.sleep(0.1)
                for pid in self._own_processes():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            remove_tree(self.base)

    def _own_processes(self) -> list[int]:
        """Processes of this instance: Postfix exports MAIL_CONFIG to its daemons and to pipe commands."""
        marker = f"MAIL_CONFIG={self.etc}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    # -- mail ----------------------------------------------------------------------

    def send(
        self, sender: str, recipients: Sequence[str], data: bytes, helo: str = "client.remote.test"
    ) -> str:
        """Submit one message over SMTP; return the queue id Postfix gave it."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname=helo, timeout=60) as smtp:
            smtp.ehlo()
            code, reply = smtp.mail(sender)
            assert code == 250, (code, reply)
            for recipient in recipients:
                code, reply = smtp.rcpt(recipient)
                assert code == 250, (recipient, code, reply)
            code, reply = smtp.data(data)
            assert code == 250, (code, reply)
        match = _QUEUED_AS.search(reply)
        assert match, reply
        return match["queue_id"].decode()

    def queue(self) -> list[dict[str, Any]]:
        """The queue as ``postqueue -j`` reports it: one object per message."""
        out = run([POSTQUEUE, "-c", self.etc, "-j"]).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_for_empty_queue(self, timeout: float = 30) -> None:
        wait_until(lambda: not self.queue(), timeout, "an empty Postfix queue", interval=0.1)

    def flush(self) -> None:
        """Ask the queue manager to retry every deferred message now."""
        run([POSTQUEUE, "-c", self.etc, "-f"])

    def wait_until_deferred(self, queue_id: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until the message rests in the deferred queue (no attempt in flight); return its entry."""

        def entry() -> dict[str, Any] | None:
            found = [m for m in self.queue() if m["queue_id"] == queue_id]
            return found[0] if found and found[0]["queue_name"] == "deferred" else None

        wait_until(lambda: entry() is not None, timeout, f"{queue_id} in the deferred queue", 0.1)
        # The agent unlocks the queue file just after reporting; a flush scan that finds it
        # still locked would park the message for 60 seconds.
        time.sleep(0.3)
        found = entry()
        assert found is not None, f"{queue_id} left the deferred queue"
        return found

    def maillog(self) -> str:
        path = self.base / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def deliveries(self, queue_id: str | None = None) -> list[Delivery]:
        found = []
        for line in self.maillog().splitlines():
            match = _DELIVERY.search(line)
            if match and (queue_id is None or match["queue_id"] == queue_id):
                found.append(Delivery(**match.groupdict()))
        return found

    def wait_for_delivery(self, queue_id: str, to: str, status: str, timeout: float = 30) -> Delivery:
        """The first log result for (queue id, recipient) with that status, waiting for it.

        A bounce is final, so waiting for anything else stops there with the reason.
        """

        def matching() -> list[Delivery]:
            results = [d for d in self.deliveries(queue_id) if d.to == to]
            bounced = [d for d in results if d.status == "bounced"]
            if bounced and status != "bounced":
                raise AssertionError(f"Postfix bounced {queue_id} for {to}: {bounced[0].detail}")
            return [d for d in results if d.status == status]

        wait_until(lambda: bool(matching()), timeout, f"status={status} for {to} in {queue_id}")
        return matching()[0]

    def mailbox(self, user: str) -> list[bytes]:
        """Messages that virtual(8) delivered to a user's maildir."""
        root = self.base / "mail" / user
        return [p.read_bytes() for sub in ("new", "cur") for p in sorted((root / sub).glob("*"))]
