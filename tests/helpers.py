"""Test helpers: a hand-moved clock, config files, the hook run as an MTA runs it, admin in-process."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MESSAGES = Path(__file__).resolve().parent / "messages"
# [limits] with every rate limit switched off: for tests that send more than the defaults let through.
LIMITS_OFF = {"per_sender": "off", "per_sender_domain": "off", "per_recipient": "off", "global": "off"}


class FakeClock:
    """The only replaced part: a clock the test moves by hand."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def hook_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a Postfix pipe gives: almost empty, no Dovecot variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update(extra or {})
    return env


def run_hook(
    config: Path,
    *args: str,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m responder --config CONFIG ARGS`` with ``stdin``, as an MTA would."""
    return subprocess.run(
        [sys.executable, "-m", "responder", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        env=hook_env(env),
        timeout=timeout,
        check=False,
    )


def run_admin(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``responder --config CONFIG ARGS`` through ``cli.main`` in this process, as ``run_hook`` would.

    The same argv, stdin, output and status without starting an interpreter per command; tests of the
    exit-status contract itself keep using ``run_hook``.
    """
    from responder.cli.main import main

    argv = ["--config", str(config), *args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv, io.BytesIO(stdin))
        except SystemExit as exc:  # argparse's usage errors, as the interpreter would map them
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue().encode(), err.getvalue().encode())


def deliver_args(sender: str, recipient: str, **extra: str) -> list[str]:
    args = ["deliver", "--sender", sender, "--recipient", recipient]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def vacation_set(config: Path, address: str, *options: str) -> None:
    result = run_admin(config, "vacation", "set", address, *options)
    assert result.returncode == 0, result.stderr.decode()


def sample(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()


@dataclass(frozen=True)
class Case:
    """One row of a corpus table: a sample file, its envelope, and the expected action and reason."""

    sample: str
    action: str
    reason: str | None
    sender: str = "bob@example.org"
    recipient: str = "alice@example.com"
    original_recipient: str = ""
