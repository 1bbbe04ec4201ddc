"""The documented master.cf command hands Postfix only 0 or 75, whatever the installation it finds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.helpers import sample, vacation_set
from tests.integration.common import DOC_CONFIG, DOC_EXECUTABLE, pipe_argv, snippet
from tests.sink import SmtpSink

# The console script pip wrote for the runner's own install: the file Postfix would start.
CONSOLE_SCRIPT = Path(sys.executable).parent / "responder"
MACROS = {"sender": "bob@example.org", "user": "alice", "nexthop": "example.com", "queue_id": "4ABCDEF"}
# pipe(8) lets an enhanced status code at the start of the output override the exit status.
STATUS_CODE_FIRST = re.compile(rb"\s*[245]\.\d{1,3}\.\d{1,3}")

# Packages that shadow the real one from PYTHONPATH, each failing in its own way at import.
SHADOWS = {
    "raises": "raise RuntimeError('half-installed')\n",
    "syntax-error": "this is not python\n",
    "exits-2": "import sys\nsys.exit(2)\n",
    "prints-a-bounce-code": "print('5.1.1 no such user')\nraise SystemExit(1)\n",
    "killed": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


def documented_command(config: Path | str = DOC_CONFIG, executable: Path = CONSOLE_SCRIPT) -> list[str]:
    text = snippet("master.cf").replace(DOC_EXECUTABLE, str(executable)).replace(DOC_CONFIG, str(config))
    return pipe_argv(text, MACROS)


def run_as_postfix(
    argv: list[str], stdin: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Like pipe(8): stdout and stderr are one stream, the environment is nearly empty."""
    return subprocess.run(
        argv,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def console_script() -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.fail(
            f"{CONSOLE_SCRIPT} is missing: install the checkout into the runner's venv (pip install -e .)"
        )


@pytest.mark.parametrize("name", sorted(SHADOWS))
def test_a_shadowing_package_defers(name: str, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "responder"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(SHADOWS[name], encoding="utf-8")
    env = {"PYTHONPATH": str(shadow.parent)}
    bare = run_as_postfix([str(CONSOLE_SCRIPT), "deliver"], sample("personal.eml"), env)
    assert bare.returncode not in (0, 75)  # what Postfix would have bounced on
    guarded = run_as_postfix(documented_command(), sample("personal.eml"), env)
    assert guarded.returncode == 75, guarded.stdout
    assert b"hook exited " in guarded.stdout  # the shell itself may say "Killed" first
    assert not STATUS_CODE_FIRST.match(guarded.stdout)


def test_a_missing_program_defers(tmp_path: Path) -> None:
    for executable in (tmp_path / "gone" / "responder", tmp_path):  # absent; a directory
        result = run_as_postfix(documented_command(executable=executable), sample("personal.eml"))
        assert result.returncode == 75, result.stdout


def test_a_script_whose_interpreter_is_gone_defers(tmp_path: Path) -> None:
    """A Python upgrade that removed the venv's interpreter leaves a script with a dead #! line."""
    script = tmp_path / "responder"
    script.write_text(f"#!{tmp_path}/removed-python3.11\nimport sys\n", encoding="utf-8")
    script.chmod(0o755)
    result = run_as_postfix(documented_command(executable=script), sample("personal.eml"))
    assert result.returncode == 75, result.stdout


def test_decisions_and_deferrals_pass_through(
    make_config: ConfigFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    config = make_config()
    vacation_set(config, "alice@example.com", "--message", "I am away.")
    replied = run_as_postfix(documented_command(config), sample("personal.eml"))
    assert replied.returncode == 0, replied.stdout
    assert len(sink.wait_for(1)) == 1
    suppressed = run_as_postfix(documented_command(config), sample("list-id.eml"))
    assert suppressed.returncode == 0, suppressed.stdout
    assert len(sink.messages) == 1
    # The hook's own transient fault (here: no configuration file) stays a deferral.
    deferred = run_as_postfix(documented_command(tmp_path / "absent.toml"), sample("personal.eml"))
    assert deferred.returncode == 75
    assert deferred.stdout.startswith(b"hook exited 75: ")
