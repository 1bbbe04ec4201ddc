"""Dovecot's own Sieve tools (sieve-test, dovecot-lda) running the documented pipe setup."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .common import (
    DOC_CONFIG,
    DOC_EXECUTABLE,
    DOC_PIPE_BIN_DIR,
    DOC_SIEVE_SCRIPT,
    HOOK_USER,
    account,
    hook_env,
    localize,
    remove_tree,
    run,
    shared_tempdir,
    snippet,
)

SIEVE_TEST = Path("/usr/bin/sieve-test")
SIEVEC = Path("/usr/bin/sievec")
DOVECOT_LDA = Path("/usr/lib/dovecot/dovecot-lda")

# What a private Dovecot needs besides the documented plugin block: a mail store, the
# Sieve plugin for the LDA, and a log file of its own instead of syslog.
_DOVECOT_CONF = """\
mail_location = maildir:{home}/Maildir
postmaster_address = postmaster@example.test
log_path = {base}/dovecot.log
protocol lda {{
  mail_plugins = sieve
}}
"""


class SieveSetup:
    """The pipe wrapper, the global Sieve script and a dovecot.conf, all under one temp dir.

    Dovecot runs pipe programs as the mail user; here the hook user plays that part and
    owns the mail store.
    """

    def __init__(self, executable: Path, config: Path) -> None:
        self.user = account(HOOK_USER)
        self.base = shared_tempdir("responder-dovecot-")
        self.home = self.base / "home"
        self.home.mkdir(mode=0o700)
        os.chown(self.home, self.user.uid, self.user.gid)
        self.bin_dir = self.base / "sieve-pipe"
        self.bin_dir.mkdir(mode=0o755)
        self.script = self.base / "responder.sieve"
        self.conf = self.base / "dovecot.conf"
        replacements = {
            DOC_EXECUTABLE: str(executable),
            DOC_CONFIG: str(config),
            DOC_PIPE_BIN_DIR: str(self.bin_dir),
            DOC_SIEVE_SCRIPT: str(self.script),
        }
        wrapper = self.bin_dir / "responder"
        wrapper.write_text(localize(snippet("sieve-pipe-wrapper"), replacements))
        wrapper.chmod(0o755)
        self.script.write_text(snippet("responder.sieve"))
        self.conf.write_text(
            _DOVECOT_CONF.format(home=self.home, base=self.base)
            + localize(snippet("dovecot.conf"), replacements)
        )
        # The LDA writes its log as the mail user.
        self.log = self.base / "dovecot.log"
        self.log.touch()
        os.chown(self.log, self.user.uid, self.user.gid)
        # Precompiled as root, as the README has administrators do: the mail user cannot
        # write next to a global script.
        run([SIEVEC, "-c", self.conf, self.script])

    def sieve_test(
        self, message: bytes, *, sender: str, recipient: str, original_recipient: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the script with ``sieve-test -e`` so the pipe action really executes.

        sieve-test cannot express a null sender (``-f`` rejects ``""`` and ``<>``); the
        LDA can, see ``deliver``.
        """
        mail = self.home / "message.eml"
        mail.write_bytes(message)
        os.chown(mail, self.user.uid, self.user.gid)
        argv: list[str | os.PathLike[str]] = [SIEVE_TEST, "-c", self.conf, "-e", "-t", "-"]
        argv += ["-f", sender, "-a", original_recipient, "-r", recipient, self.script, mail]
        return run(argv, user=self.user, env=hook_env(self.home), cwd=self.home, check=False)

    def deliver(
        self, message: bytes, *, sender: str, recipient: str, original_recipient: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Deliver with ``dovecot-lda`` (the script runs as ``sieve_before``); ``""`` is the null sender."""
        argv: list[str | os.PathLike[str]] = [
            DOVECOT_LDA,
            "-c",
            self.conf,
            "-f",
            sender,
            "-a",
            original_recipient,
            "-r",
            recipient,
        ]
        return run(argv, user=self.user, env=hook_env(self.home), input_bytes=message, check=False)

    def mailbox(self) -> list[bytes]:
        root = self.home / "Maildir"
        return [p.read_bytes() for sub in ("new", "cur") for p in sorted((root / sub).glob("*"))]

    def read_log(self, since: int = 0) -> str:
        """Dovecot's log from byte offset ``since`` (take ``log_size()`` before acting)."""
        return self.log.read_bytes()[since:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def close(self) -> None:
        remove_tree(self.base)
