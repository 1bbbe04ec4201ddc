"""`responder serve`: LMTP over real sockets, one status per recipient, faults, signals, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from responder.daemons.lmtp_service import INLINE_HEADERS
from responder.lmtp import client as lmtpclient
from responder.lmtp.session import Session, Transaction, split_path, xtext_decode
from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample, vacation_set
from tests.lmtp_support import CountingRelay, LmtpClient, ServiceProcess
from tests.sink import SmtpSink

ALICE = "alice@example.com"
CAROL = "carol@example.com"
BOB = "bob@example.org"

ServiceFactory = Callable[..., ServiceProcess]


def _message(sender: str = BOB, to: str = ALICE, number: int = 1, extra: str = "") -> bytes:
    return (
        f"From: Bob <{sender}>\nTo: {to}\nSubject: question {number}\n"
        f"Message-ID: <{number}.{sender}@example.org>\n{extra}\nHello.\n"
    ).encode()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lmtp.sock"


@pytest.fixture
def start_service(make_config: ConfigFactory, socket_path: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(**sections: dict[str, object]) -> ServiceProcess:
        server = {"socket": f"unix:{socket_path}", **sections.pop("server", {})}
        config = make_config(server=server, **sections)
        service = ServiceProcess(config, socket_path, tmp_path / f"service-{len(started)}.log").start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def _audit(db_url: str) -> list[tuple[str, str | None, str]]:
    store = Store.open(db_url)
    try:
        return [(row.recipient, row.reason, row.queue_id) for row in reversed(store.decisions(limit=1000))]
    finally:
        store.close()


def _lock(db_url: str) -> sqlite3.Connection:
    """Take SQLite's write lock as another writer would; the service's writes wait for it."""
    connection = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    return connection


def test_one_status_per_recipient_in_order(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    replies = client.send_message(BOB, [ALICE, CAROL, "not-an-address"], _message(), xforward="IDENT=QID1")
    client.close()
    assert [code for code, _ in replies] == [250, 250, 250]
    assert "reply" in replies[0][1] and ALICE in replies[0][1]
    assert "suppress (no-vacation)" in replies[1][1]
    assert "suppress (malformed)" in replies[2][1]
    [reply] = sink.wait_for(1)
    assert reply.rcpt_tos == [BOB]
    assert sorted(_audit(db_url)) == sorted(
        [(ALICE, None, "QID1"), (CAROL, "no-vacation", "QID1"), ("not-an-address", "malformed", "QID1")]
    )
    assert service.log().count("action=") == 3


def test_a_header_rule_decides_alike_on_the_loop_and_in_the_header_thread(
    start_service: ServiceFactory, socket_path: Path, db_url: str
) -> None:
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    small = _message(number=1, extra="Precedence: bulk")
    large = _message(number=2, extra="Precedence: bulk") + b"x" * INLINE_HEADERS  # header rules in a thread
    client = LmtpClient(socket_path)
    client.greet()
    replies = [
        client.send_message(BOB, [ALICE], raw, xforward=f"IDENT=Q{len(raw)}")[0] for raw in (small, large)
    ]
    client.close()
    assert [(code, "suppress (precedence)" in text) for code, text in replies] == [(250, True)] * 2
    assert sorted(_audit(db_url)) == sorted(
        [(ALICE, "precedence", f"Q{len(small)}"), (ALICE, "precedence", f"Q{len(large)}")]
    )
    assert service.log().count("action=suppress reason=precedence") == 2


def test_database_fault_is_451_for_the_recipients_it_hits(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service(database={"busy_timeout": "0.3s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    lock = _lock(db_url)
    try:
        client = LmtpClient(socket_path)
        client.greet()
        replies = client.send_message(BOB, [ALICE, CAROL], _message())
    finally:
        lock.rollback()
        lock.close()
    # Alice's reply needs the interval claim (a write): deferred. Carol's decision needs no write; only
    # its audit row is lost, which is logged and never a reason to defer.
    assert replies[0][0] == 451 and replies[0][1].startswith("4.3.0")
    assert replies[1][0] == 250
    assert "audit not written" in service.log()
    assert sink.wait_for(1, timeout=0.3) == []
    # The retry, once the database is free again, answers.
    again = client.send_message(BOB, [ALICE], _message())
    client.close()
    assert again[0][0] == 250 and "reply" in again[0][1]
    assert len(sink.wait_for(1)) == 1


def test_original_recipient_and_xforward_reach_the_engine(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service()
    vacation_set(service.config, "team@example.com", "--message", "The team is away.")
    client = LmtpClient(socket_path)
    client.greet()
    replies = client.send_message(
        BOB,
        [ALICE],
        _message(to="team@example.com"),
        xforward="ADDR=IPV6:2001:db8::1 HELO=mx.example.org IDENT=Q+2B2",
        orcpt="team@example.com",
    )
    client.close()
    assert replies[0][0] == 250 and "reply" in replies[0][1]
    [reply] = sink.wait_for(1)
    assert "team@example.com" in reply.message["From"]
    assert _audit(db_url) == [(ALICE, None, "Q+2")]


def test_commands_out_of_place_get_5xx_and_the_session_goes_on(
    start_service: ServiceFactory, socket_path: Path
) -> None:
    start_service()
    client = LmtpClient(socket_path)
    assert client.reply()[0] == 220
    assert client.command("HELO x")[0] == 500
    assert client.command("MAIL FROM:<a@b>")[0] == 503
    assert client.command("LHLO test")[0] == 250
    assert client.command("RCPT TO:<a@b>")[0] == 503
    assert client.command("DATA")[0] == 503
    assert client.command("XFORWARD NOPE=1")[0] == 501
    assert client.command("FOO")[0] == 500
    assert client.command("NOOP")[0] == 250
    assert client.command("VRFY a@b")[0] == 252
    assert client.command("MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS")[0] == 250
    assert client.command("XFORWARD ADDR=192.0.2.1")[0] == 503
    assert client.command("MAIL FROM:<a@example.org>")[0] == 503
    assert client.command("RCPT TO:<b@example.com> NOTIFY=NEVER ORCPT=rfc822;b@example.com")[0] == 250
    assert client.command("RSET")[0] == 250
    assert client.command("DATA")[0] == 503
    client.close()


def test_command_lines_are_bounded_and_an_overlong_one_is_answered_in_step(
    start_service: ServiceFactory, socket_path: Path
) -> None:
    start_service()
    client = LmtpClient(socket_path)
    assert client.reply()[0] == 220
    limit = 4096  # lmtp.session.COMMAND_LIMIT: the CR counted, the LF not
    assert client.command("NOOP " + "x" * (limit - 6)) == (250, "2.0.0 Ok")
    assert client.command("NOOP " + "x" * (limit - 5)) == (500, "5.5.2 Line too long")
    # A runaway line far over the limit, sent in one go: dropped to its end, then the session goes on.
    assert client.command("NOOP " + "x" * (300 * 1024)) == (500, "5.5.2 Line too long")
    assert client.command("NOOP") == (250, "2.0.0 Ok")
    client.close()


def test_a_huge_message_with_huge_lines_is_cut_never_refused(
    start_service: ServiceFactory, socket_path: Path, db_url: str
) -> None:
    service = start_service(server={"max_message_size": 4096})
    raw = _message(extra="X-Long: " + "y" * 20000 + "\n") + (b"." + b"z" * 3000 + b"\n") * 300
    client = LmtpClient(socket_path)
    client.greet()
    replies = client.send_message(BOB, [ALICE], raw)
    client.close()
    assert replies[0][0] == 250
    assert "cut to the first 4096" in service.log()
    assert _audit(db_url)[0][1] == "no-vacation"


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"Subject: x\r\n\r\n..leading dot\r\n.\r\nNOOP\r\n", b"Subject: x\n\n.leading dot\n"),
        (b"..first line\r\nsecond\r\n.\r\nNOOP\r\n", b".first line\nsecond\n"),
        (b"a\r\n" + b"b" * 300000 + b"\r\n..c\r\n.\r\nNOOP\r\n", b"a\n" + b"b" * 300000 + b"\n.c\n"),
        (b".\r\nNOOP\r\n", b""),
    ],
)
def test_data_is_unstuffed_with_lf_line_ends_and_what_follows_kept(wire: bytes, message: bytes) -> None:
    """The DATA reader on a real socket pair, fed three bytes at a time."""

    async def run() -> tuple[bytes, bytes]:
        session, right = await _session_on_a_pair()
        feeder = asyncio.get_running_loop().run_in_executor(None, _feed, right, wire)
        data = await session.read_data()
        await feeder
        rest = bytes(session.buffer)
        while not rest.endswith(b"\r\n"):
            rest += await session.reader.read(100)
        right.close()
        session.writer.close()
        await session.writer.wait_closed()
        return data, rest

    data, rest = asyncio.run(run())
    assert data == message
    assert rest == b"NOOP\r\n"


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"", "421 4.4.2 Idle for too long, closing"),  # between transactions
        (b"MAIL FROM:<b@example.org>", "421 4.4.2 Idle for too long, closing"),  # within a command
        (
            b"MAIL FROM:<b@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSubject: x\r\n",
            "421 4.4.2 Timeout",
        ),
    ],
)
def test_a_client_that_stops_talking_is_told_and_cut_off(wire: bytes, expected: str) -> None:
    async def run() -> bytes:
        session, right = await _session_on_a_pair(idle_timeout=0.2)
        right.sendall(b"LHLO c\r\n" + wire)
        await asyncio.wait_for(session.run(), 10)
        return _all_said(right)

    said = asyncio.run(run()).decode()
    assert said.splitlines()[-1].startswith(expected), said


def test_the_replies_to_a_pipelined_group_go_out_in_one_write_and_a_lone_command_at_once() -> None:
    async def run() -> tuple[list[bytes], bytes]:
        session, right = await _session_on_a_pair(idle_timeout=0.5)
        writes: list[bytes] = []
        write = session.writer.write

        def recorded(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        session.writer.write = recorded  # type: ignore[method-assign]
        running = asyncio.ensure_future(session.run())
        right.sendall(b"LHLO c\r\n")
        await asyncio.wait_for(_said_until(right, b"250 ENHANCEDSTATUSCODES\r\n"), 5)
        # One group (RFC 2920): the client waits for the 354 before its data.
        right.sendall(b"RSET\r\nMAIL FROM:<b@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        said = await asyncio.wait_for(_said_until(right, b"354 "), 5)
        await asyncio.wait_for(running, 10)  # no data comes: cut off at the idle timeout
        _all_said(right)
        return writes, said

    writes, said = asyncio.run(run())
    assert [line[:3] for line in said.splitlines()] == [b"250", b"250", b"250", b"354"], said
    # The greeting and the LHLO reply were said at once, each alone; the group's four in one write.
    assert [w[:3] for w in writes] == [b"220", b"250", b"250", b"421"], writes
    assert writes[2].count(b"\r\n") == 4 and writes[2].startswith(b"250 2.0.0 Ok\r\n250 2.1.0"), writes


async def _said_until(client: socket.socket, end: bytes) -> bytes:
    """What the session said to ``client`` up to a line starting with ``end``, read in a thread."""

    def read() -> bytes:
        client.settimeout(5)
        said = b""
        while not said.startswith(end) and f"\n{end.decode()}".encode() not in said:
            said += client.recv(4096)
        return said

    return await asyncio.to_thread(read)


@pytest.mark.parametrize("why", ["stop", "evict", "evict-before-the-wait"])
def test_an_idle_session_is_closed_at_once_by_a_stop_or_an_eviction(why: str) -> None:
    async def run() -> tuple[str, float]:
        stopping = asyncio.Event()
        session, right = await _session_on_a_pair(idle_timeout=30, stopping=stopping)
        if why == "evict-before-the-wait":
            session.evict()  # kept for the wait to come
        running = asyncio.ensure_future(session.run())
        if why != "evict-before-the-wait":
            right.sendall(b"LHLO c\r\n")
        while not session.idle and not running.done():
            await asyncio.sleep(0.01)
        began = time.monotonic()
        if why == "stop":
            stopping.set()
        elif why == "evict":
            session.evict()
        await asyncio.wait_for(running, 10)
        took = time.monotonic() - began
        return _all_said(right).decode(), took

    said, took = asyncio.run(run())
    expected = "421 4.3.2 Service shutting down" if why == "stop" else "421 4.3.2 Too many connections"
    assert said.splitlines()[-1].startswith(expected), said
    assert took < 5  # not the idle timeout


async def _session_on_a_pair(
    *, idle_timeout: float = 5, max_message_size: int = 1 << 20, stopping: asyncio.Event | None = None
) -> tuple[Session, socket.socket]:
    """A session on one end of a socket pair, and the other end, for the test to be the client."""
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    session = Session(
        reader,
        writer,
        _never,
        hostname="h",
        max_message_size=max_message_size,
        idle_timeout=idle_timeout,
        stopping=stopping or asyncio.Event(),
    )
    return session, right


def _all_said(client: socket.socket) -> bytes:
    """What the session said to ``client`` until it closed; the client's end is closed too."""
    client.settimeout(5)
    said = b""
    while chunk := client.recv(4096):
        said += chunk
    client.close()
    return said


def _feed(sock: socket.socket, wire: bytes) -> None:
    for position in range(0, len(wire), 3):
        sock.sendall(wire[position : position + 3])


async def _never(transaction: Transaction, data: bytes) -> list[str]:
    raise AssertionError("not called")


def test_addresses_and_parameters_as_written() -> None:
    assert split_path("<>") == ("", [])
    assert split_path('<"a>b c"@example.com> SIZE=10') == ('"a>b c"@example.com', ["SIZE=10"])
    assert split_path("<@relay.example,@b.example:user@example.com>") == ("user@example.com", [])
    assert split_path("user@example.com BODY=8BITMIME") == ("user@example.com", ["BODY=8BITMIME"])
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_decode("j\\x{E9}r\\x{F4}me@example.com") == "j\u00e9r\u00f4me@example.com"
    assert xtext_decode(lmtpclient.xtext("\u00e9+=x@example.com")) == "\u00e9+=x@example.com"


def test_sixteen_clients_at_once(start_service: ServiceFactory, socket_path: Path, db_url: str) -> None:
    service = start_service(server={"workers": 4})
    clients, each = 16, 5

    def one(number: int) -> list[str]:
        outcomes = []
        for serial in range(each):
            outcome, problem = lmtpclient.deliver(
                f"unix:{socket_path}",
                sender=f"sender{number}@example.org",
                recipient=f"user{number}@example.com",
                original_recipient="",
                client_address="192.0.2.7",
                helo="mx.example.org",
                queue_id=f"Q{number}x{serial}",
                raw=_message(f"sender{number}@example.org", number=serial),
                connect_timeout=5,
                timeout=60,
            )
            outcomes.append(outcome + problem)
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        results = [o for outcomes in pool.map(one, range(clients)) for o in outcomes]
    assert all(result.startswith(lmtpclient.DECIDED) for result in results), results
    rows = _audit(db_url)
    assert len(rows) == clients * each
    assert {queue for _, _, queue in rows} == {f"Q{n}x{s}" for n in range(clients) for s in range(each)}
    assert service.log().count("action=suppress reason=no-vacation") == clients * each


def test_sigterm_finishes_the_message_in_flight(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service(database={"busy_timeout": "20s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    idle = LmtpClient(socket_path)
    idle.greet()
    lock = _lock(db_url)
    results: list[list[tuple[int, str]]] = []
    busy = LmtpClient(socket_path)
    busy.greet()
    sender = threading.Thread(target=lambda: results.append(busy.send_message(BOB, [ALICE], _message())))
    sender.start()
    try:
        sender.join(timeout=1)  # the decision now waits for the lock
        assert sender.is_alive()
        service.send_signal(signal.SIGTERM)
        service.wait_log("stopping")
        # Idle sessions are told to go, no new ones are taken.
        assert idle.reply()[0] == 421
        with pytest.raises(OSError):
            LmtpClient(socket_path, timeout=2)
    finally:
        lock.rollback()
        lock.close()
    sender.join(timeout=30)
    busy.close()
    idle.close()
    assert results and results[0][0][0] == 250 and "reply" in results[0][0][1]
    assert len(sink.wait_for(1)) == 1
    assert service.stop() == 0
    assert "stopped" in service.log()


def test_sighup_reloads_and_messages_in_flight_finish_on_the_old_configuration(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    # One process: its sessions live on across the reload (with workers, see test_workers.py).
    service = start_service(database={"busy_timeout": "20s"}, server={"processes": 1})
    vacation_set(service.config, ALICE, "--message", "Away.")
    second = SmtpSink().start()
    try:
        lock = _lock(db_url)
        results: list[list[tuple[int, str]]] = []
        client = LmtpClient(socket_path)
        client.greet()
        in_flight = threading.Thread(
            target=lambda: results.append(
                client.send_message("first@example.org", [ALICE], _message("first@example.org"))
            )
        )
        in_flight.start()
        in_flight.join(timeout=1)
        assert in_flight.is_alive()
        text = service.config.read_text(encoding="utf-8")
        service.config.write_text(
            text.replace(f"port = {sink.port}", f"port = {second.port}"), encoding="utf-8"
        )
        service.send_signal(signal.SIGHUP)
        service.wait_log("configuration reloaded")
        lock.rollback()
        lock.close()
        in_flight.join(timeout=30)
        assert results[0][0][0] == 250
        # Decided on the old configuration; sent from the outbox over the relay configured now.
        assert [m.rcpt_tos for m in second.wait_for(1)] == [["first@example.org"]]

        replies = client.send_message("second@example.org", [ALICE], _message("second@example.org"))
        client.close()
        assert replies[0][0] == 250
        assert sorted(m.rcpt_tos[0] for m in second.wait_for(2)) == [
            "first@example.org",
            "second@example.org",
        ]
        assert sink.messages == []

        # A broken file is refused; the running configuration stays.
        service.config.write_text("[server\n", encoding="utf-8")
        service.send_signal(signal.SIGHUP)
        service.wait_log("reload failed")
        client = LmtpClient(socket_path)
        client.greet()
        assert client.send_message("third@example.org", [ALICE], _message("third@example.org"))[0][0] == 250
        client.close()
        assert len(second.wait_for(3)) == 3
    finally:
        second.stop()


def test_tcp_socket(make_config: ConfigFactory, tmp_path: Path, db_url: str) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = make_config(server={"socket": f"127.0.0.1:{port}"})
    service = ServiceProcess(config, tmp_path / "unused", tmp_path / "tcp.log").start()
    try:
        client = LmtpClient(("127.0.0.1", port))
        client.greet()
        assert client.send_message(BOB, [ALICE], sample("personal.eml"))[0][0] == 250
        client.close()
    finally:
        assert service.stop() == 0
    assert _audit(db_url) == [(ALICE, "no-vacation", "")]


def test_serve_without_a_socket_fails_to_start(make_config: ConfigFactory) -> None:
    result = run_hook(make_config(), "serve")
    assert result.returncode == 1
    assert b"server.socket is not set" in result.stderr


def test_a_running_service_is_not_replaced(
    start_service: ServiceFactory, make_config: ConfigFactory, socket_path: Path
) -> None:
    start_service()
    result = run_hook(make_config(server={"socket": f"unix:{socket_path}"}), "serve", timeout=30)
    assert result.returncode == 1
    assert b"another server is listening" in result.stderr


@pytest.mark.parametrize("hang_up", [False, True], ids=["kept", "dropped-by-the-relay"])
def test_relay_connections_are_reused_and_replaced_when_gone(
    hang_up: bool, start_service: ServiceFactory, socket_path: Path
) -> None:
    relay = CountingRelay(hang_up=hang_up)
    try:
        service = start_service(smtp={"port": relay.port})
        vacation_set(service.config, ALICE, "--message", "Away.")
        client = LmtpClient(socket_path)
        client.greet()
        for number in range(3):
            sender = f"s{number}@example.org"
            [(code, text)] = client.send_message(sender, [ALICE], _message(sender, number=number))
            assert (code, "reply" in text) == (250, True)
            assert relay.wait_for(number + 1) == number + 1
        client.close()
        # One connection for all three replies, or a fresh one after each hang-up.
        assert relay.connections == (3 if hang_up else 1)
        service.stop()
    finally:
        relay.close()


def test_a_decision_given_up_at_the_deadline_never_sends(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service(database={"busy_timeout": "20s"}, deliver={"deadline": "1s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    lock = _lock(db_url)
    try:
        # The interval claim waits for the lock past the deadline: the client is answered 451.
        [(code, text)] = client.send_message(BOB, [ALICE], _message())
        assert (code, text.startswith("4.4.7")) == (451, True)
    finally:
        lock.rollback()
        lock.close()
    # The worker goes on once the lock is free, and must not send what the client was told is not sent.
    log = service.wait_log("action=", count=1)
    assert sink.messages == []
    assert "action=defer" in log and "deadline passed before the response was queued" in log
    # The claim was given back: the MTA's retry answers, once.
    [(code, text)] = client.send_message(BOB, [ALICE], _message())
    client.close()
    assert (code, "reply" in text) == (250, True)
    assert len(sink.wait_for(1)) == 1


def test_a_relay_slower_than_the_deadline_gets_one_message_over_three_retries(
    start_service: ServiceFactory, socket_path: Path
) -> None:
    relay = CountingRelay(delay=2.5)
    try:
        service = start_service(smtp={"port": relay.port, "timeout": "10s"}, deliver={"deadline": "1s"})
        vacation_set(service.config, ALICE, "--message", "Away.")
        client = LmtpClient(socket_path)
        client.greet()
        statuses = [client.send_message(BOB, [ALICE], _message())[0][0] for _ in range(3)]
        client.close()
        assert relay.wait_for(2, timeout=3) == 1, statuses
        service.stop()
    finally:
        relay.close()


SLOW_TEMPLATE = (
    "{% for a in subject %}{% for b in subject %}{% for c in subject %}{% for d in subject %}"
    "{% endfor %}{% endfor %}{% endfor %}{% endfor %}{{ message }}\n"
)


def test_a_slow_template_costs_one_render_and_list_mail_never_waits_for_it(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, tmp_path: Path, db_url: str
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "slow.txt.j2").write_text(SLOW_TEMPLATE, encoding="utf-8")
    service = start_service(
        server={"workers": 1}, reply={"templates_dir": str(templates)}, deliver={"deadline": "20s"}
    )
    # The sample subject of `vacation set` is short: the template passes the check.
    vacation_set(service.config, ALICE, "--message", "Away.", "--template", "slow.txt.j2")
    results: list[list[tuple[int, str]]] = []
    slow = LmtpClient(socket_path)
    slow.greet()
    message = _message().replace(b"Subject: question 1", b"Subject: question " + b"x" * 200)
    worker = threading.Thread(target=lambda: results.append(slow.send_message(BOB, [ALICE], message)))
    worker.start()
    try:
        worker.join(timeout=0.5)
        assert worker.is_alive(), (results, service.log())
        # The only worker is rendering; a list message is decided on its headers all the same.
        began = time.monotonic()
        quick = LmtpClient(socket_path)
        quick.greet()
        [(code, text)] = quick.send_message(
            BOB, [ALICE], _message(number=2, extra="List-Id: <l.example.org>")
        )
        quick.close()
        assert (code, "list-header" in text) == (250, True)
        assert time.monotonic() - began < 1.5
    finally:
        worker.join(timeout=30)
        slow.close()
    [(code, text)] = results[0]
    assert (code, "template-error" in text) == (250, True)
    assert sink.messages == []
    assert "took longer than 2s" in service.log()


def _send_expecting_a_cut(client: LmtpClient) -> None:
    with contextlib.suppress(OSError):
        client.send_message(BOB, [ALICE], _message())


def test_sigterm_stops_within_stop_timeout_however_busy_the_workers(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service(database={"busy_timeout": "30s"}, server={"stop_timeout": "1s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    lock = _lock(db_url)
    try:
        busy = LmtpClient(socket_path)
        busy.greet()
        sender = threading.Thread(target=_send_expecting_a_cut, args=(busy,), daemon=True)
        sender.start()
        sender.join(timeout=1)
        assert sender.is_alive()
        began = time.monotonic()
        assert service.stop() == 0
        stopped = time.monotonic() - began
    finally:
        lock.rollback()
        lock.close()
    busy.sock.close()
    assert stopped < 4, f"took {stopped:.1f}s"
    assert "still busy after 1s" in service.log()
    assert sink.wait_for(1, timeout=0.5) == []


def test_idle_clients_make_room_for_a_message(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, make_config: ConfigFactory
) -> None:
    service = start_service(server={"max_connections": 3, "processes": 1})  # a cap per process
    vacation_set(service.config, ALICE, "--message", "Away.")
    idle = [LmtpClient(socket_path) for _ in range(3)]
    for client in idle:
        client.greet()
    began = time.monotonic()
    result = run_hook(service.config, *deliver_args(BOB, ALICE), stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    assert time.monotonic() - began < 10
    assert result.stderr == b""  # decided by the service
    assert "action=reply" in service.wait_log("action=reply")
    # The longest idle session was told why it goes.
    code, text = idle[0].reply()
    assert (code, "Too many connections" in text) == (421, True)
    for client in idle:
        client.sock.close()


def test_one_tcp_client_holds_at_most_half_the_sessions(make_config: ConfigFactory, tmp_path: Path) -> None:
    port = _tcp_port()
    config = make_config(server={"socket": f"127.0.0.1:{port}", "max_connections": 4, "processes": 1})
    service = ServiceProcess(config, tmp_path / "unused", tmp_path / "tcp.log").start()
    try:
        first, second = LmtpClient(("127.0.0.1", port)), LmtpClient(("127.0.0.1", port))
        first.greet()
        second.greet()
        third = LmtpClient(("127.0.0.1", port))
        third.greet()
        code, text = first.reply()
        assert (code, "Too many connections" in text) == (421, True)
        assert second.command("NOOP")[0] == 250
        for client in (first, second, third):
            client.sock.close()
    finally:
        assert service.stop() == 0


def _tcp_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "listed"])
def test_xforward_on_tcp_only_from_listed_hosts(
    allowed: bool, make_config: ConfigFactory, tmp_path: Path, db_url: str
) -> None:
    port = _tcp_port()
    server: dict[str, object] = {"socket": f"127.0.0.1:{port}"}
    if allowed:
        server["xforward_hosts"] = ["192.0.2.0/24", "127.0.0.1"]
    service = ServiceProcess(make_config(server=server), tmp_path / "unused", tmp_path / "tcp.log").start()
    try:
        client = LmtpClient(("127.0.0.1", port))
        assert client.reply()[0] == 220
        code, text = client.command("LHLO test.example")
        assert (code, "XFORWARD" in text) == (250, allowed)
        code, _ = client.command("XFORWARD ADDR=192.0.2.9 IDENT=FORGED")
        assert code == (250 if allowed else 550)
        assert client.send_message(BOB, [ALICE], sample("personal.eml"))[0][0] == 250
        client.close()
    finally:
        assert service.stop() == 0
    assert _audit(db_url) == [(ALICE, "no-vacation", "FORGED" if allowed else "")]


def test_control_characters_never_reach_the_log_or_the_audit(
    start_service: ServiceFactory, socket_path: Path, db_url: str
) -> None:
    service = start_service()
    client = LmtpClient(socket_path)
    client.greet()
    assert client.command("XFORWARD IDENT=Q1+0Aresponder:+20forged HELO=a+0Db")[0] == 250
    assert client.command("MAIL FROM:<bob\r@example.org>")[0] == 250
    assert client.command("RCPT TO:<alice@example.com>")[0] == 250
    client.sock.sendall(b"RCPT TO:<\xff\x1b[31m@example.com>\r\n")
    assert client.reply()[0] == 250
    assert client.command("DATA")[0] == 354
    client.sock.sendall(b"Subject: x\r\n\r\nHello.\r\n.\r\n")
    replies = [client.reply(), client.reply()]
    client.close()
    assert [code for code, _ in replies] == [250, 250]
    log = service.wait_log("action=", count=2)
    assert "\r" not in log and "\x1b" not in log
    assert not any(line.startswith("responder:") for line in log.splitlines())
    rows = _audit(db_url)
    assert {queue for _, _, queue in rows} == {"Q1\\x0aresponder: forged"}
    assert {recipient for recipient, _, _ in rows} == {ALICE, "\\xff\\x1b[31m@example.com"}
    assert "Traceback" not in log


def test_an_out_of_range_orcpt_and_a_client_reset_are_ordinary(
    make_config: ConfigFactory, tmp_path: Path, db_url: str
) -> None:
    port = _tcp_port()
    config = make_config(server={"socket": f"127.0.0.1:{port}"})
    service = ServiceProcess(config, tmp_path / "unused", tmp_path / "tcp.log").start()
    try:
        client = LmtpClient(("127.0.0.1", port))
        client.greet()
        assert client.command("MAIL FROM:<bob@example.org>")[0] == 250
        assert client.command("RCPT TO:<alice@example.com> ORCPT=rfc822;\\x{110000}\\x{D800}")[0] == 250
        assert client.command("DATA")[0] == 354
        client.sock.sendall(b"Subject: x\r\n\r\nHello.\r\n.\r\n")
        assert client.reply()[0] == 250
        client.close()
        # A client that resets the connection while the service still has something to say.
        reset = socket.create_connection(("127.0.0.1", port), timeout=5)
        reset.sendall(b"LHLO x\r\n" * 50)
        time.sleep(0.3)
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()
        service.wait_log("LMTP client went away")
    finally:
        assert service.stop() == 0
    log = service.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert _audit(db_url) == [(ALICE, "no-vacation", "")]


def test_reading_a_message_holds_it_about_once() -> None:
    """The DATA reader's peak allocation for an 8 MiB message, measured with tracemalloc."""
    size = 8 << 20
    wire = (b"x" * 78 + b"\r\n") * (size // 80) + b".\r\n"

    async def run() -> tuple[int, int]:
        session, right = await _session_on_a_pair(max_message_size=1 << 30)
        feeder = asyncio.get_running_loop().run_in_executor(None, right.sendall, wire)
        tracemalloc.start()
        data = await session.read_data()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        await feeder
        right.close()
        session.writer.close()
        await session.writer.wait_closed()
        return len(data), peak

    length, peak = asyncio.run(run())
    assert length == size // 80 * 79
    assert peak < 2.3 * length, f"peak {peak / length:.2f} times the message"


def test_the_thin_client_streams_the_message() -> None:
    raw = (b"x" * 78 + b"\n") * ((8 << 20) // 79)
    tracemalloc.start()
    sent = sum(len(piece) for piece in lmtpclient.to_wire(raw))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sent == len(raw) + len(raw) // 79 + 3
    assert peak < len(raw) / 8
