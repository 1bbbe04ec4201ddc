"""One responder configuration and database owned by the hook user, driven through the real CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .common import HOOK_USER, account, hook_env, remove_tree, run, shared_tempdir


class ResponderInstance:
    """A config file readable by everyone and a state directory only the hook user can use.

    Admin commands run as the hook user too, as the README tells administrators to do:
    a database file created by root would be unwritable for the pipe transport.
    """

    def __init__(self, executable: Path) -> None:
        self.executable = executable
        self.user = account(HOOK_USER)
        self.base = shared_tempdir("responder-state-")
        self.config = self.base / "responder.toml"
        self.state = self.base / "state"
        self.state.mkdir(mode=0o700)
        os.chown(self.state, self.user.uid, self.user.gid)
        self.database = self.state / "responder.sqlite3"

    def configure(self, smtp_port: int) -> None:
        """Write the config: replies go to ``smtp_port`` on loopback; no DNS, so no sender verification."""
        self.config.write_text(
            "[database]\n"
            f'url = "sqlite:///{self.database}"\n'
            "\n[smtp]\n"
            'host = "127.0.0.1"\n'
            f"port = {smtp_port}\n"
            'timeout = "10s"\n'
            'hostname = "responder.example.test"\n'
            "\n[verify]\n"
            'require = "off"\n'
        )
        self.config.chmod(0o644)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """``responder --config CFG ARGS...`` as the hook user."""
        return run(
            [self.executable, "--config", str(self.config), *args],
            user=self.user,
            env=hook_env(self.state),
            cwd=self.state,
            check=check,
        )

    def set_vacation(self, address: str, message: str = "I am away") -> None:
        self.cli("vacation", "set", address, "--message", message, "--interval", "7d")

    def break_database(self) -> None:
        """Make the database unreachable for the hook user: a transient local fault."""
        self.state.chmod(0o000)

    def repair_database(self) -> None:
        self.state.chmod(0o700)

    def close(self) -> None:
        remove_tree(self.base)
