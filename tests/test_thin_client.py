"""`responder deliver` as a thin client of the service: exit statuses, fallback, what goes on the wire."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, hook_env, run_hook, sample, vacation_set
from tests.lmtp_support import ScriptedServer, ServiceProcess
from tests.sink import SmtpSink

ALICE = "alice@example.com"
BOB = "bob@example.org"


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lmtp.sock"


@pytest.fixture
def scripted(socket_path: Path) -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.close()


def _rows(db_url: str) -> list[tuple[str, str | None, str]]:
    store = Store.open(db_url)
    try:
        return [(row.action, row.reason, row.queue_id) for row in store.decisions()]
    finally:
        store.close()


def test_the_hook_hands_the_message_to_the_service(
    make_config: ConfigFactory, socket_path: Path, tmp_path: Path, sink: SmtpSink, db_url: str
) -> None:
    config = make_config(server={"socket": f"unix:{socket_path}"})
    vacation_set(config, ALICE, "--message", "Away.")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        result = run_hook(
            config,
            *deliver_args(BOB, ALICE, queue_id="4QX", client_address="192.0.2.1", helo="mx.example.org"),
            stdin=sample("personal.eml"),
        )
        assert result.returncode == 0, result.stderr.decode()
        # The service decided and logged it; the hook said nothing.
        assert result.stderr == b""
        assert "queue_id=4QX" in service.wait_log("action=reply")
    finally:
        assert service.stop() == 0
    [reply] = sink.wait_for(1)
    assert reply.rcpt_tos == [BOB]
    assert _rows(db_url) == [("reply", None, "4QX")]


@pytest.mark.parametrize(
    ("final", "status"),
    [
        ("250 2.0.0 <alice@example.com> suppress (no-vacation)", 0),
        ("451 4.3.0 <alice@example.com> database unavailable", 75),
        # Never a bounce, whatever the service says.
        ("550 5.1.1 what", 75),
        (None, 75),
    ],
)
def test_exit_status_follows_the_service_and_a_service_that_answered_is_never_second_guessed(
    final: str | None,
    status: int,
    make_config: ConfigFactory,
    socket_path: Path,
    scripted: list[ScriptedServer],
    sink: SmtpSink,
    db_url: str,
) -> None:
    scripted.append(ScriptedServer(socket_path, final=final))
    config = make_config(server={"socket": f"unix:{socket_path}"})
    vacation_set(config, ALICE, "--message", "Away.")
    result = run_hook(config, *deliver_args(BOB, ALICE), stdin=sample("personal.eml"))
    assert result.returncode == status, result.stderr.decode()
    if status:
        assert b"ERROR deferring" in result.stderr
    # Decided by the service (here: nobody), so not in-process: no audit row, no reply.
    assert _rows(db_url) == []
    assert sink.received() == []


def test_the_envelope_on_the_wire(
    make_config: ConfigFactory, socket_path: Path, scripted: list[ScriptedServer]
) -> None:
    server = ScriptedServer(socket_path)
    scripted.append(server)
    config = make_config(server={"socket": f"unix:{socket_path}"})
    args = deliver_args(
        "",
        "alice@example.com",
        original_recipient="team+sales@example.com",
        client_address="2001:db8::1",
        helo="mx.example.org",
        queue_id="4ABC",
    )
    raw = b"Subject: x\n\n.dot line\nlast line without newline"
    assert run_hook(config, *args, stdin=raw).returncode == 0
    [seen] = server.wait_received()
    lines = seen.split(b"\r\n")
    assert b"XFORWARD ADDR=2001:db8::1 HELO=mx.example.org IDENT=4ABC" in lines
    assert b"MAIL FROM:<>" in lines
    assert b"RCPT TO:<alice@example.com> ORCPT=rfc822;team+2Bsales@example.com" in lines
    assert b"DATA\r\nSubject: x\r\n\r\n..dot line\r\nlast line without newline\r\n.\r\nQUIT\r\n" in seen


def test_a_socket_not_offering_xforward_is_told_nothing_and_the_hook_decides(
    make_config: ConfigFactory,
    socket_path: Path,
    scripted: list[ScriptedServer],
    sink: SmtpSink,
    db_url: str,
) -> None:
    server = ScriptedServer(socket_path, xforward=False)
    scripted.append(server)
    config = make_config(server={"socket": f"unix:{socket_path}"})
    vacation_set(config, ALICE, "--message", "Away.")
    result = run_hook(config, *deliver_args(BOB, ALICE, queue_id="Q3"), stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    assert b"does not offer XFORWARD" in result.stderr and b"deciding in-process" in result.stderr
    [seen] = server.wait_received()
    assert b"MAIL FROM" not in seen
    assert len(sink.wait_for(1)) == 1
    assert _rows(db_url) == [("reply", None, "Q3")]


@pytest.mark.parametrize("named", ["in-the-file", "on-the-command-line"])
@pytest.mark.parametrize("where", ["missing-unix", "closed-tcp"])
def test_no_service_means_deciding_in_process(
    where: str, named: str, make_config: ConfigFactory, tmp_path: Path, sink: SmtpSink, db_url: str
) -> None:
    if where == "missing-unix":
        socket = f"unix:{tmp_path / 'nobody.sock'}"
    else:
        import socket as socketlib

        probe = socketlib.socket()
        probe.bind(("127.0.0.1", 0))
        socket = f"127.0.0.1:{probe.getsockname()[1]}"
        probe.close()
    if named == "in-the-file":
        config, flag = make_config(server={"socket": socket}), []
    else:
        config, flag = make_config(), ["--service", socket]
    vacation_set(config, ALICE, "--message", "Away.")
    args = deliver_args(BOB, ALICE, queue_id="Q1")
    result = run_hook(config, *args, *flag, stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.count(b"deciding in-process") == 1
    assert b"action=reply" in result.stderr
    assert len(sink.wait_for(1)) == 1
    assert _rows(db_url) == [("reply", None, "Q1")]


# A hook run in a fresh interpreter that reports what it loaded beyond a bare interpreter's modules.
PROBE = """
import io, sys
before = set(sys.modules)
from responder.cli.main import main
status = main(sys.argv[1:], io.BytesIO(sys.stdin.buffer.read()))
sys.stdout.write(repr((status, sorted(set(sys.modules) - before))))
"""


@pytest.mark.parametrize("named", ["in-the-file", "on-the-command-line"])
def test_the_thin_client_loads_nothing_it_does_not_need(
    named: str, make_config: ConfigFactory, socket_path: Path, scripted: list[ScriptedServer]
) -> None:
    scripted.append(ScriptedServer(socket_path))
    if named == "in-the-file":
        config, flag = make_config(server={"socket": f"unix:{socket_path}"}), []
    else:
        config, flag = make_config(), ["--service", f"unix:{socket_path}"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(config), *deliver_args(BOB, ALICE), *flag],
        input=sample("personal.eml"),
        capture_output=True,
        env=hook_env(),
        timeout=60,
        check=True,
    )
    status, loaded = eval(result.stdout.decode())  # our own repr of (int, list[str])
    assert status == 0
    unwanted = {
        "logging",
        "email",
        "sqlite3",
        "asyncio",
        "socket",
        "responder.mail.message",
        "responder.decide.rules",
        "responder.decide.context",
        "responder.config.settings",
        "responder.decide.audit",
        "sqlalchemy",
        # Not even the standard library's helpers (3 ms of a 10 ms interpreter start).
        "contextlib",
        "collections",
    }
    if named == "on-the-command-line":
        # Not even the configuration file is read: no TOML parser, no regular expressions.
        unwanted |= {"tomllib", "re", "typing"}
    assert unwanted.isdisjoint(loaded), sorted(loaded)
    assert {"responder.hook.fast", "responder.lmtp.client"} <= set(loaded)


@pytest.mark.parametrize("greeting", [None, b"421 4.3.2 Service too many connections, try again later\r\n"])
def test_a_service_that_does_not_greet_in_time_is_decided_without(
    greeting: bytes | None, make_config: ConfigFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    # A listener that takes connections and says nothing, as a service whose every slot is taken.
    import socket as socketlib
    import threading
    import time

    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(8)
    taken: list[socketlib.socket] = []

    def greet() -> None:
        conn, _ = listener.accept()
        taken.append(conn)
        if greeting is not None:
            conn.sendall(greeting)

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    try:
        config = make_config(server={"socket": f"unix:{socket_path}", "connect_timeout": "1s"})
        vacation_set(config, ALICE, "--message", "Away.")
        began = time.monotonic()
        result = run_hook(config, *deliver_args(BOB, ALICE, queue_id="Q9"), stdin=sample("personal.eml"))
        elapsed = time.monotonic() - began
    finally:
        greeter.join(timeout=10)
        for conn in taken:
            conn.close()
        listener.close()
    assert result.returncode == 0, result.stderr.decode()
    assert b"deciding in-process" in result.stderr
    assert elapsed < 8, f"{elapsed:.1f}s"
    assert len(sink.wait_for(1)) == 1
    assert _rows(db_url) == [("reply", None, "Q9")]
