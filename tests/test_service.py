"""`responder serve`: LMTP over real sockets, one status per recipient, faults, signals, concurrency."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from responder import lmtpclient
from responder.lmtp import Session, Transaction, split_path, xtext_decode
from responder.store import Store
from tests.conftest import ConfigFactory
from tests.helpers import run_hook, sample, vacation_set
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
        left, right = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=left)
        session = Session(
            reader,
            writer,
            _never,
            hostname="h",
            max_message_size=1 << 20,
            idle_timeout=5,
            stopping=asyncio.Event(),
        )
        feeder = asyncio.get_running_loop().run_in_executor(None, _feed, right, wire)
        data = await session.read_data()
        await feeder
        rest = bytes(session.buffer)
        while not rest.endswith(b"\r\n"):
            rest += await reader.read(100)
        right.close()
        writer.close()
        await writer.wait_closed()
        return data, rest

    data, rest = asyncio.run(run())
    assert data == message
    assert rest == b"NOOP\r\n"


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
    service = start_service(database={"busy_timeout": "20s"})
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
        assert [m.rcpt_tos for m in sink.wait_for(1)] == [["first@example.org"]]

        replies = client.send_message("second@example.org", [ALICE], _message("second@example.org"))
        client.close()
        assert replies[0][0] == 250
        assert [m.rcpt_tos for m in second.wait_for(1)] == [["second@example.org"]]
        assert len(sink.messages) == 1

        # A broken file is refused; the running configuration stays.
        service.config.write_text("[server\n", encoding="utf-8")
        service.send_signal(signal.SIGHUP)
        service.wait_log("reload failed")
        client = LmtpClient(socket_path)
        client.greet()
        assert client.send_message("third@example.org", [ALICE], _message("third@example.org"))[0][0] == 250
        client.close()
        assert len(second.wait_for(2)) == 2
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
