"""The hook run as Postfix runs it: exit statuses, replies at a real SMTP server, faults."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, hook_env, run_admin, run_hook, sample, vacation_set
from tests.sink import SmtpSink

SENDER = "bob@example.org"
RCPT = "alice@example.com"


def _deliver(config: Path, stdin: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return run_hook(config, *deliver_args(SENDER, RCPT, queue_id="4ABC"), *extra, stdin=stdin)


def _audit(config: Path) -> list[str]:
    result = run_admin(config, "log")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()[1:]  # under the column headings


def test_personal_message_gets_one_reply(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    [received] = sink.wait_for(1)
    assert received.mail_from == "<>"
    assert received.rcpt_tos == [SENDER]
    assert received.message["Auto-Submitted"] == "auto-replied"
    assert b"action=reply" in result.stderr and b"queue_id=4ABC" in result.stderr
    [line] = _audit(config)
    assert "reply" in line and SENDER in line and "4ABC" in line


def test_dovecot_environment_supplies_the_envelope(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    env = {"SENDER": SENDER, "RECIPIENT": RCPT, "ORIG_RECIPIENT": RCPT}
    result = run_hook(config, "deliver", stdin=sample("personal.eml"), env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert len(sink.wait_for(1)) == 1


def test_dovecot_null_sender_has_no_sender_variable(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    result = run_hook(config, "deliver", stdin=sample("personal.eml"), env={"RECIPIENT": RCPT})
    assert result.returncode == 0, result.stderr.decode()
    assert b"reason=null-sender" in result.stderr
    assert sink.received() == []


@pytest.mark.parametrize(
    "stdin",
    [b"", bytes(range(256)) * 64, b"\xff\xfe\x00garbage\r\n\r\n\x00", b"Subject: \x80\x81\n\n\x00"],
    ids=["empty", "binary", "nul-and-crlf", "8bit-header"],
)
def test_garbage_is_a_decision_not_a_bounce(make_config: ConfigFactory, sink: SmtpSink, stdin: bytes) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    result = _deliver(config, stdin)
    assert result.returncode == 0
    assert b"Traceback" not in result.stderr
    assert b"action=suppress" in result.stderr
    assert sink.received() == []


def test_thirty_megabyte_message(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    big = sample("personal.eml") + (b"x" * 998 + b"\r\n") * 30_000
    assert len(big) > 30_000_000
    result = _deliver(config, big)
    assert result.returncode == 0, result.stderr.decode()
    [received] = sink.wait_for(1)
    assert len(received.data) < 10_000  # the reply quotes nothing of the original


@pytest.mark.parametrize(
    ("rcpt_reply", "data_reply"),
    [("451 4.3.0 try later", ""), ("", "452 4.3.1 out of space")],
    ids=["rcpt-4xx", "data-4xx"],
)
def test_relay_4xx_defers_and_retry_replies_once(
    make_config: ConfigFactory, sink: SmtpSink, rcpt_reply: str, data_reply: str
) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    sink.rcpt_reply, sink.data_reply = rcpt_reply, data_reply
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    sink.rcpt_reply = sink.data_reply = ""
    assert _deliver(config, sample("personal.eml")).returncode == 0
    assert _deliver(config, sample("personal.eml")).returncode == 0
    assert len(sink.received()) == 1


def test_relay_down_defers(make_config: ConfigFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = make_config(smtp={"port": closed_port, "timeout": 3})
    vacation_set(config, RCPT, "--message", "I am away.")
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"deferring" in result.stderr


def test_relay_5xx_is_an_error_with_advice_and_leaves_the_interval_free(
    make_config: ConfigFactory, sink: SmtpSink
) -> None:
    """Postfix's answer to a relay it does not trust: the admin's to fix, never the sender's loss."""
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    sink.rcpt_reply = "554 5.7.1 <bob@example.org>: Relay access denied"
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 0
    [line] = [line for line in result.stderr.decode().splitlines() if "reason=relay-refused" in line]
    assert ": ERROR " in line and "at RCPT TO" in line and "nothing was sent" in line
    assert "mynetworks" in line
    assert sink.messages == []
    sink.rcpt_reply = ""
    # Once the relay is fixed, the sender's next message is answered: the refusal used up nothing.
    again = sample("personal.eml").replace(b"<abc123@example.org>", b"<abc124@example.org>")
    assert _deliver(config, again).returncode == 0
    assert len(sink.wait_for(1)) == 1


def test_database_missing_defers(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(database={"url": f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3"})
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"database" in result.stderr


def test_unmigrated_database_defers(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(database={"url": f"sqlite:///{tmp_path}/empty.sqlite3"})
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"responder db upgrade" in result.stderr


def test_outdated_schema_defers(make_config: ConfigFactory, db_path: Path, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0000'")
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"database schema is 0000" in result.stderr
    assert sink.received() == []


def test_locked_database_defers_after_busy_timeout(
    make_config: ConfigFactory, db_path: Path, sink: SmtpSink
) -> None:
    config = make_config(database={"busy_timeout": "1s"})
    vacation_set(config, RCPT, "--message", "I am away.")
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        result = _deliver(config, sample("personal.eml"))
    finally:
        holder.close()
    assert result.returncode == 75, result.stderr.decode()
    assert _deliver(config, sample("personal.eml")).returncode == 0
    assert len(sink.wait_for(1)) == 1


def test_header_rule_decides_even_when_the_database_is_down(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(database={"url": f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3"})
    result = _deliver(config, sample("list-id.eml"))
    assert result.returncode == 0
    assert b"reason=list-header" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["deliver", "--recipient", RCPT],  # no sender and no $SENDER
        ["deliver", "--sender", SENDER],
        ["deliver", "--sender", SENDER, "--recipient", RCPT, "--bogus"],
    ],
    ids=["no-sender", "no-recipient", "unknown-flag"],
)
def test_usage_errors_defer(make_config: ConfigFactory, args: list[str]) -> None:
    result = run_hook(make_config(), *args, stdin=sample("personal.eml"))
    assert result.returncode == 75
    assert b"deferring" in result.stderr


def test_bad_config_value_defers_naming_the_key(make_config: ConfigFactory) -> None:
    config = make_config(smtp={"port": "twenty-five"})
    result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"smtp.port" in result.stderr


def test_deadline_defers(make_config: ConfigFactory, sink: SmtpSink) -> None:
    """A relay that accepts the connection but never answers is cut off by the hook's deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = make_config(
            smtp={"port": silent.getsockname()[1], "timeout": 30}, deliver={"deadline": "2s"}
        )
        vacation_set(config, RCPT, "--message", "I am away.")
        result = _deliver(config, sample("personal.eml"))
    assert result.returncode == 75
    assert b"deadline" in result.stderr
    assert _deliver(make_config(), sample("personal.eml")).returncode == 0
    assert len(sink.wait_for(1)) == 1  # the claim was given back


@pytest.mark.race
def test_ten_processes_same_message_one_reply(make_config: ConfigFactory, sink: SmtpSink) -> None:
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    command = [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(SENDER, RCPT)]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=hook_env())
        for _ in range(10)
    ]
    message = sample("personal.eml")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(message)
        proc.stdin.close()
    codes = [proc.wait(timeout=120) for proc in procs]
    for proc in procs:
        assert proc.stderr is not None
        proc.stderr.close()
    assert codes == [0] * 10
    assert len(sink.received()) == 1
    actions = [line.split()[2] for line in _audit(config)]
    assert sorted(actions) == ["reply"] + ["suppress"] * 9


def test_exit_status_is_never_other_than_0_or_75_when_stdin_is_closed(make_config: ConfigFactory) -> None:
    config = make_config()
    result = subprocess.run(
        [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(SENDER, RCPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=hook_env(),
        check=False,
    )
    assert result.returncode == 0
    assert b"reason=malformed" in result.stderr


def test_broken_installation_defers(tmp_path: Path) -> None:
    """An import failure (an upgrade half done) must not end with Python's status 1: Postfix bounces on it."""
    import shutil

    from tests.helpers import REPO

    package = tmp_path / "responder"
    shutil.copytree(REPO / "responder", package)
    (package / "cli" / "main.py").write_text("this is not python\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "responder", "deliver", "--sender", SENDER, "--recipient", RCPT],
        input=sample("personal.eml"),
        capture_output=True,
        env={**hook_env(), "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 75
    assert b"cannot load the program" in result.stderr


def _close_stderr() -> None:
    import os

    os.close(2)


def test_closed_stderr_changes_no_exit_status(
    make_config: ConfigFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    """Postfix gives the hook a stderr; a hook started without one must still end with 0 or 75."""
    config = make_config()
    vacation_set(config, RCPT, "--message", "I am away.")
    command = [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(SENDER, RCPT)]
    for stdin, expected in ((sample("personal.eml"), 0), (sample("list-id.eml"), 0)):
        result = subprocess.run(
            command,
            input=stdin,
            stdout=subprocess.DEVNULL,
            env=hook_env(),
            preexec_fn=_close_stderr,
            check=False,
        )
        assert result.returncode == expected
    assert len(sink.wait_for(1)) == 1
    broken = tmp_path / "broken"
    import shutil

    from tests.helpers import REPO

    shutil.copytree(REPO / "responder", broken / "responder")
    (broken / "responder" / "cli" / "main.py").write_text("this is not python\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "responder", "deliver", "--sender", SENDER, "--recipient", RCPT],
        input=sample("personal.eml"),
        stdout=subprocess.DEVNULL,
        env={**hook_env(), "PYTHONPATH": str(broken)},
        cwd=broken,
        preexec_fn=_close_stderr,
        check=False,
    )
    assert result.returncode == 75
