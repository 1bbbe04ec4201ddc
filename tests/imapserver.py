"""A private Dovecot IMAP server on loopback ports with a passwd-file of test users and a throwaway cert.

The web service checks mail passwords against it exactly as against a site's own Dovecot: STARTTLS
on the plain port, TLS on the imaps port. ``stop`` and ``start`` again simulate the server going down.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.certs import TlsFiles, make_tls

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

USERS = {
    "alice@example.com": "alice-secret-1",
    "bob@example.com": "bob-secret-2",
    "carol@example.org": "carol-secret-3",
}

_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = responder-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
disable_plaintext_auth = no
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{base}/mail/%d/%n
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
# Tests fail logins on purpose: no delay and no growing per-IP penalty (mode 0 switches it off).
auth_failure_delay = 0
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int, greeting: bool) -> bool:
    """The port accepts connections (and greets, unless TLS comes first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return not greeting or sock.recv(4).startswith(b"* OK")
    except OSError:
        return False


class ImapServer:
    """One private Dovecot; ``port`` offers STARTTLS, ``tls_port`` is imaps, ``tls.ca`` verifies both."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="responder-imap-"))
        self.base.chmod(0o755)
        self.tls: TlsFiles = make_tls(self.base)
        # Dovecot reads the key as root before dropping privileges; the login processes never see it.
        self.users = dict(USERS)
        passwd = self.base / "passwd"
        passwd.write_text("".join(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in USERS.items()))
        passwd.chmod(0o644)  # read by the auth process, which runs as the dovecot user
        # Mail of the test users belongs to an unprivileged account: Dovecot refuses uid 0.
        self.mail_user = pwd.getpwnam("dovecot")
        (self.base / "mail").mkdir()
        os.chown(self.base / "mail", self.mail_user.pw_uid, self.mail_user.pw_gid)
        self.port = 0
        self.tls_port = 0
        self.conf = self.base / "dovecot.conf"
        self.log = self.base / "dovecot.log"

    @property
    def url(self) -> str:
        return f"imap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"imaps://127.0.0.1:{self.tls_port}"

    def _write_conf(self) -> None:
        self.conf.write_text(
            _CONF.format(
                base=self.base,
                cert=self.tls.cert,
                key=self.tls.key,
                port=self.port,
                tls_port=self.tls_port,
                uid=self.mail_user.pw_uid,
                gid=self.mail_user.pw_gid,
            )
        )

    def start(self, timeout: float = 30.0) -> ImapServer:
        for _attempt in range(5):
            if not self.port:
                self.port, self.tls_port = _free_port(), _free_port()
            self._write_conf()
            # Output to a file: the daemon keeps what it inherited open, and a pipe would never end.
            with (self.base / "start.out").open("wb") as out:
                result = subprocess.run(
                    [DOVECOT, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT, check=False
                )
            if result.returncode == 0:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if _listening(self.port, True) and _listening(self.tls_port, False):
                        return self
                    time.sleep(0.1)
            self.stop()
            self.port = self.tls_port = 0  # a port taken meanwhile: try others
        started = (self.base / "start.out").read_text(errors="replace")
        raise RuntimeError(f"dovecot did not start: {started} {self.read_log()}")

    def _master_pid(self) -> int | None:
        try:
            return int((self.base / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (its ports then refuse connections); ``start`` brings it back on them."""
        pid = self._master_pid()
        if pid is None:
            return
        subprocess.run(
            [DOVECOT, "-c", str(self.conf), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        (self.base / "run" / "master.pid").unlink(missing_ok=True)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
