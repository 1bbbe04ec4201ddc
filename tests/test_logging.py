"""Log lines and audit rows: syslog that is not there falls back to stderr, input never adds a line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.hook.deliver import deliver_in_process
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_admin, run_hook, sample, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.policytools import PolicyProcess, ask, postfix_request

ALICE = "alice@example.com"
BOB = "bob@example.org"
WARNING = "WARNING syslog unavailable at "


@pytest.fixture(autouse=True)
def _forget_handlers() -> Iterator[None]:
    """In-process tests point the logger at a captured stream; later tests must not write there."""
    import logging

    yield
    logger = logging.getLogger("responder")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _dead_syslog(kind: str, directory: Path) -> str:
    """A syslog address where nothing takes the lines: missing, a socket nobody listens on, a plain file."""
    path = directory / "log"
    if kind == "closed":
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound.bind(str(path))
        bound.close()  # the socket file stays; connecting to it is refused
    elif kind == "not-a-socket":
        path.write_text("not a socket\n")
    return str(path)


KINDS = ["missing", "closed", "not-a-socket"]


def _check_fallback(stderr: str, decision: str, address: str) -> None:
    assert "Logging error" not in stderr and "Traceback" not in stderr, stderr
    assert stderr.count(WARNING) == 1, stderr
    assert f"{WARNING}{address} (" in stderr
    assert stderr.count(decision) == 1, stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("message", "decision"),
    [("list-id.eml", "INFO queue_id=Q1 "), ("personal.eml", "reason=no-vacation")],
    ids=["header-path", "full-path"],
)
def test_deliver_without_syslog_logs_the_decision_to_stderr(
    kind: str, message: str, decision: str, make_config: ConfigFactory, short_dir: Path
) -> None:
    address = _dead_syslog(kind, short_dir)
    config = make_config(log={"syslog": True, "syslog_socket": address})
    result = run_hook(config, *deliver_args(BOB, ALICE, queue_id="Q1"), stdin=sample(message))
    assert result.returncode == 0
    stderr = result.stderr.decode()
    _check_fallback(stderr, decision, address)
    assert "action=suppress" in stderr


@pytest.mark.parametrize("kind", KINDS)
def test_serve_without_syslog_logs_to_stderr(
    kind: str, make_config: ConfigFactory, short_dir: Path, tmp_path: Path
) -> None:
    address = _dead_syslog(kind, short_dir)
    socket_path = short_dir / "lmtp.sock"
    config = make_config(
        log={"syslog": True, "syslog_socket": address}, server={"socket": f"unix:{socket_path}"}
    )
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        client = LmtpClient(socket_path)
        client.greet()
        replies = client.send_message(BOB, [ALICE], sample("personal.eml"), xforward="IDENT=Q1")
        client.close()
        assert [code for code, _ in replies] == [250]
        service.wait_log("reason=no-vacation")
    finally:
        assert service.stop() == 0
    _check_fallback(service.log(), "reason=no-vacation", address)


@pytest.mark.parametrize("kind", KINDS)
def test_policy_without_syslog_logs_to_stderr(kind: str, make_config: ConfigFactory, short_dir: Path) -> None:
    address = _dead_syslog(kind, short_dir)
    config = make_config(log={"syslog": True, "syslog_socket": address})
    set_bounce = run_admin(config, "bounce", "set", ALICE, "--message", "Alice has left.")
    assert set_bounce.returncode == 0, set_bounce.stderr.decode()
    server = PolicyProcess(config, f"unix:{short_dir / 'policy.sock'}").started()
    try:
        with server.connect() as sock:
            assert ask(sock, postfix_request(ALICE, queue_id="Q1")).startswith("REJECT 5.1.6")
        server.wait_for_log("action=reject")
    finally:
        assert server.stop() == 0
    _check_fallback(server.log(), "action=reject", address)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def _audit(config: Path) -> list[dict[str, str]]:
    result = run_admin(config, "log", "--json")
    assert result.returncode == 0, result.stderr.decode()
    rows: list[dict[str, str]] = json.loads(result.stdout)
    return rows


@pytest.mark.parametrize(
    ("flags", "env", "shown"),
    [
        ({"sender": "bob@example.org\r\nX-Injected: yes"}, {}, "bob@example.org\\x0d\\x0aX-Injected: yes"),
        ({}, {"SENDER": "bob@example.org\nfake: line", "RECIPIENT": ALICE}, "bob@example.org\\x0afake: line"),
        ({"sender": BOB, "queue_id": "Q1\rQ2\x1b[2J"}, {}, "Q1\\x0dQ2\\x1b[2J"),
    ],
    ids=["cr-lf-in-sender", "newline-in-dovecot-sender", "controls-in-queue-id"],
)
def test_control_characters_never_reach_the_log_or_the_audit(
    flags: dict[str, str], env: dict[str, str], shown: str, make_config: ConfigFactory
) -> None:
    config = make_config()
    vacation_set(config, ALICE, "--message", "Away.")
    # Dovecot passes no flags at all; the others are written as master.cf writes them, --flag=value.
    given = {"recipient": ALICE, **flags} if flags else {}
    args = ["deliver", *(f"--{key.replace('_', '-')}={value}" for key, value in given.items())]
    result = run_hook(config, *args, stdin=sample("personal.eml"), env=env)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert shown in lines[0]
    [row] = _audit(config)
    assert not any(_has_control(str(value)) for value in row.values()), row
    assert shown in (row["sender"], row["queue_id"])


def test_the_full_path_escapes_as_the_header_path_does(
    make_config: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine's log line and audit row for a sender the header rules call malformed."""
    config = make_config()
    sender = "bob@example.org\r\n\u2028x\x85"
    argv = ["--config", str(config), *deliver_args(sender, ALICE, queue_id="Q\x00")]
    assert deliver_in_process(argv, sample("personal.eml")) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "reason=malformed" in lines[0], lines
    assert "sender=<bob@example.org\\x0d\\x0a\\u2028x\\x85> " in lines[0]
    [row] = _audit(config)
    assert (row["sender"], row["queue_id"]) == ("bob@example.org\\x0d\\x0a\\u2028x\\x85", "Q\\x00")


def test_a_traceback_keeps_its_lines_but_input_adds_none(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from responder.logsetup import setup_logging

    setup_logging()
    log = logging.getLogger("responder")
    try:
        raise ValueError("bad <bob@example.org\nfake: line>")
    except ValueError:
        log.exception("sender=<%s>", "a\rb")
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("ERROR sender=<a\\x0db>")
    assert err.splitlines()[1] == "Traceback (most recent call last):"
    assert "ValueError: bad <bob@example.org\\x0afake: line>" in err


def test_syslog_going_away_later_costs_no_line(short_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A daemon that stops after the start: its lines go to stderr after one warning."""
    import logging

    from responder.config.load import settings_from_mapping
    from responder.logsetup import setup_logging

    path = str(short_dir / "log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    options = settings_from_mapping({"log": {"syslog": True, "syslog_socket": path}}).log
    setup_logging(options)
    logger = logging.getLogger("responder")
    info, warning = logger.info, logger.warning
    info("first")
    assert receiver.recv(4096).endswith(b"first\x00")
    receiver.close()
    os.unlink(path)
    info("second")
    info("third")
    warning("fourth")
    err = capfd.readouterr().err
    assert "Logging error" not in err and err.count(WARNING) == 1, err
    assert [line.split(": ", 1)[1] for line in err.splitlines() if WARNING not in line] == [
        "INFO second",
        "INFO third",
        "WARNING fourth",
    ]
