"""Shared plumbing for the integration harness: paths, temp trees, the hook user, the venv, snippets."""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The README's fenced blocks named by their info string (```cfg main.cf) are what the tests run.
SNIPPETS = REPO_ROOT / "README.md"

# The dedicated unprivileged account the Postfix pipe transport runs the hook as
# (created by .ci/install-mail-servers).
HOOK_USER = "responder"

# Documented placeholder paths in the README snippets, replaced by temporary ones.
DOC_EXECUTABLE = "/opt/responder/bin/responder"
DOC_CONFIG = "/etc/responder/responder.toml"
DOC_POSTFIX_DIR = "/etc/postfix/"
DOC_PIPE_BIN_DIR = "/usr/local/lib/dovecot/sieve-pipe"
DOC_SIEVE_SCRIPT = "/etc/dovecot/sieve/responder.sieve"

SYSTEM_PYTHON = Path("/usr/bin/python3")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account(name: str) -> Account:
    """The uid/gid of a system account, or a clear failure naming the install script."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"system user {name!r} is missing: run .ci/install-mail-servers as root") from None
    return Account(name, entry.pw_uid, entry.pw_gid)


def shared_tempdir(prefix: str) -> Path:
    """A fresh directory under the system temp dir that other users may traverse and read.

    Postfix daemons, the hook user and Dovecot's tools all run as other accounts than the
    test, and ``mkdtemp`` creates mode 0700.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def remove_tree(path: Path) -> None:
    """Remove a temp tree even when a test left parts of it unreadable (root ignores modes anyway)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    user: Account | None = None,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command, optionally as another account with only its own group.

    A failure raises with the command's output in the message, so a broken
    harness step says why instead of a bare exit status.
    """
    result = subprocess.run(
        [os.fspath(a) for a in argv],
        input=input_bytes if input_bytes is not None else b"",
        capture_output=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        check=False,
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=[] if user else None,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(str(a) for a in argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout.decode(errors='replace')}\n"
            f"stderr: {result.stderr.decode(errors='replace')}"
        )
    return result


@functools.cache
def missing_prerequisite() -> str | None:
    """What this machine lacks for the integration tests, or None when it has everything."""
    if os.geteuid() != 0:
        return "the integration tests start Postfix and switch to the responder user: run them as root"
    try:
        pwd.getpwnam(HOOK_USER)
    except KeyError:
        return f"system user {HOOK_USER!r} is missing: run .ci/install-mail-servers as root"
    if not SYSTEM_PYTHON.exists() or run([SYSTEM_PYTHON, "-c", "import ensurepip"], check=False).returncode:
        return f"{SYSTEM_PYTHON} cannot make a venv (python3-venv): run .ci/install-mail-servers as root"
    return None


def hook_env(home: Path) -> dict[str, str]:
    """The small environment a delivery agent gives the programs it runs."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def build_venv(dest: Path) -> Path:
    """Install the checkout (non-editable) into a venv of Debian's Python; return the console script.

    Debian's interpreter, not the test runner's: the hook runs as an unprivileged user who
    cannot see a Python installed under /root.
    """
    if not SYSTEM_PYTHON.exists():
        raise RuntimeError(f"{SYSTEM_PYTHON} is missing: run .ci/install-mail-servers as root")
    run([SYSTEM_PYTHON, "-m", "venv", dest], timeout=300)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    # The runner's own venv must not leak into the build of the one under test.
    pip_env.pop("VIRTUAL_ENV", None)
    pip_env.pop("PYTHONPATH", None)
    run([dest / "bin" / "pip", "install", "--quiet", REPO_ROOT], env=pip_env, timeout=600)
    executable = dest / "bin" / "responder"
    if not executable.exists():
        raise RuntimeError(f"installing {REPO_ROOT} gave no {executable}")
    return executable


_BLOCK = re.compile(r"^```(?P<lang>\S+) (?P<name>\S+)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


def snippet(name: str) -> str:
    """The body of the fenced block named ``name`` in the README."""
    blocks = {m["name"]: m["body"] for m in _BLOCK.finditer(SNIPPETS.read_text(encoding="utf-8"))}
    if name not in blocks:
        raise KeyError(f"{SNIPPETS.name} has no block named {name!r} (has {sorted(blocks)})")
    return blocks[name]


def localize(text: str, replacements: Mapping[str, str]) -> str:
    """Replace the documented paths of a snippet by this run's temporary ones."""
    for documented, actual in replacements.items():
        text = text.replace(documented, actual)
    return text


# The macros pipe(8) knows; any other name in a command is a configuration error there too.
_PIPE_MACROS = frozenset({
    "client_address", "client_helo", "client_hostname", "client_port", "client_protocol", "domain",
    "extension", "mailbox", "nexthop", "original_recipient", "queue_id", "recipient", "sasl_method",
    "sasl_sender", "sasl_username", "sender", "size", "user",
})  # fmt: skip
_PIPE_MACRO = re.compile(r"\$(?:\$|\{(?P<braced>\w+)\}|(?P<bare>\w+))")


def pipe_argv(master_cf: str, macros: Mapping[str, str]) -> list[str]:
    """The command pipe(8) runs for the first ``argv=`` of a master.cf entry, macros expanded.

    As Postfix 3.x splits it: continuation lines join the entry, arguments are separated by
    whitespace, ``{ ... }`` groups one argument with its inner edges trimmed, ``$$`` is ``$``.
    """
    entry = " ".join(line.strip() for line in master_cf.splitlines() if line.strip())
    rest = entry.split("argv=", 1)[1]
    args: list[str] = []
    tokens = iter(rest.split())
    for token in tokens:
        if token != "{":
            args.append(token)
            continue
        group = []
        for inner in tokens:
            if inner == "}":
                break
            group.append(inner)
        else:
            raise ValueError(f"unclosed {{ in {rest!r}")
        args.append(" ".join(group))

    def expand(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        if name is None:
            return "$"
        if name not in _PIPE_MACROS:
            raise ValueError(f"pipe(8) knows no macro ${name}")
        return macros.get(name, "")

    return [_PIPE_MACRO.sub(expand, arg) for arg in args]
