"""The policy server over real sockets with the Postfix protocol: answers, abuse, outages, shutdown."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from responder.store.database import Store
from tests.backends import Databases, server_url
from tests.conftest import ConfigFactory
from tests.policytools import (
    FaultProxy,
    PolicyProcess,
    action_of,
    ask,
    closed_by_server,
    encode,
    postfix_request,
    read_answer,
)

ALICE = "alice@example.com"
REJECT_ALICE = "REJECT 5.1.6 Alice has left. Please write to bob@example.com."
DEFER = "DEFER_IF_PERMIT 4.3.0 Temporary lookup failure"
HOUR = dt.timedelta(hours=1)

Start = Callable[..., PolicyProcess]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def retire(store: Store, address: str = ALICE, **fields: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    values = {"message": "Alice has left.\r\nPlease write to bob@example.com.", "status": "5.1.6"}
    assert store.put_retirement(address, now, **{"timezone": "UTC", **values, **fields})


@pytest.fixture
def start(make_config: ConfigFactory, short_dir: Path) -> Iterator[Start]:
    """Start a policy server (UNIX socket unless ``listen`` is given); SIGTERM stops each after the test."""
    started: list[PolicyProcess] = []

    def run(listen: str = "", database: str = "", **policy: object) -> PolicyProcess:
        sections: dict[str, dict[str, object]] = {"policy": dict(policy)}
        if database:
            sections["database"] = {"url": database}
        config = make_config(**sections)
        server = PolicyProcess(config, listen or f"unix:{short_dir / f'policy{len(started)}.sock'}")
        started.append(server)
        return server.started()

    yield run
    for server in started:
        code = server.stop()
        assert code == 0, server.log()
        assert "Traceback" not in server.log()


def test_answers_many_requests_on_one_connection(store: Store, start: Start) -> None:
    now = dt.datetime.now(dt.UTC)
    retire(store)
    retire(store, "later@example.com", starts_at=now + HOUR)
    retire(store, "over@example.com", starts_at=now - 2 * HOUR, ends_at=now - HOUR)
    retire(store, "moved@example.com", status="5.1.1", message="Unknown user")
    store.put_vacation("carol@example.com", now, None, enabled=True, message="away", timezone="UTC")
    server = start()
    cases = [
        (postfix_request(ALICE), REJECT_ALICE),
        (postfix_request("Alice@EXAMPLE.com"), REJECT_ALICE),
        (postfix_request("<alice@example.com>"), REJECT_ALICE),
        (postfix_request("moved@example.com"), "REJECT 5.1.1 Unknown user"),
        (postfix_request("bob@example.com"), "DUNNO"),
        (postfix_request("carol@example.com"), "DUNNO"),  # on vacation: delivered, answered later
        (postfix_request("later@example.com"), "DUNNO"),
        (postfix_request("over@example.com"), "DUNNO"),
        (postfix_request(""), "DUNNO"),
        (postfix_request("not an address"), "DUNNO"),
        # Only RCPT time knows the recipient; every other stage gets no opinion.
        (postfix_request(ALICE, "DATA"), "DUNNO"),
        (postfix_request(ALICE, "END-OF-MESSAGE"), "DUNNO"),
        (postfix_request(ALICE, "VRFY"), "DUNNO"),
        (postfix_request("", "CONNECT"), "DUNNO"),
        (postfix_request(ALICE, "rcpt"), REJECT_ALICE),
    ]
    with server.connect() as sock:
        for _round in range(20):
            for attributes, expected in cases:
                assert ask(sock, attributes) == expected, attributes["recipient"]
    assert "action=reject status=5.1.6" in server.wait_for_log("recipient=<alice@example.com>")


def test_pipelined_requests_are_answered_in_order(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    recipients = [ALICE if i % 3 == 0 else f"user{i}@example.com" for i in range(100)]
    with server.connect() as sock:
        sock.sendall(b"".join(encode(postfix_request(r)) for r in recipients))
        answers = [action_of(read_answer(sock)) for _ in recipients]
    assert answers == [REJECT_ALICE if r == ALICE else "DUNNO" for r in recipients]


def test_fifty_concurrent_connections(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    barrier = threading.Barrier(50)

    def client(number: int) -> list[bool]:
        with server.connect() as sock:
            barrier.wait(timeout=20)
            results = []
            for i in range(20):
                retired = (number + i) % 2 == 0
                recipient = ALICE if retired else f"u{number}.{i}@example.com"
                results.append(
                    ask(sock, postfix_request(recipient)) == (REJECT_ALICE if retired else "DUNNO")
                )
            return results

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(client, range(50)))
    elapsed = time.monotonic() - began
    assert all(all(results) for results in outcomes)
    assert elapsed < 30, f"1000 requests over 50 connections took {elapsed:.1f}s"


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not an attribute\n\n",
        b"=value\n\n",
        b"Request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=alice@example.com\n\n",
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=bob@example.com\nrecipient=alice@example.com\n\n",
        b"request=something_else\nprotocol_state=RCPT\nrecipient=alice@example.com\n\n",
        b"protocol_state=RCPT\nrecipient=alice@example.com\n\n",
        b"\n",
        b"\x00\xff\xfe=\x80\n\n",
        b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\nrecipient=nobody@example.com\r\n\r\n",
    ],
    ids=[
        "no-equals",
        "no-name",
        "upper-case-name",
        "duplicate",
        "other-request",
        "no-request",
        "empty",
        "binary",
        "crlf",
    ],
)
def test_malformed_requests_get_dunno_and_the_connection_stays_in_step(
    store: Store, start: Start, raw: bytes
) -> None:
    retire(store)
    server = start()
    with server.connect() as sock:
        sock.sendall(raw)
        assert action_of(read_answer(sock)) == "DUNNO"
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE


def test_crlf_line_ends_are_understood(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    with server.connect() as sock:
        sock.sendall(encode(postfix_request(ALICE)).replace(b"\n", b"\r\n"))
        assert action_of(read_answer(sock)) == REJECT_ALICE


def test_oversized_requests(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    with server.connect() as sock:
        # One line of 100 kB: read to the end of the request, answered DUNNO, still in step.
        huge_line = dict(postfix_request(ALICE), ccert_subject="x" * 100_000)
        assert ask(sock, huge_line) == "DUNNO"
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
        # 2000 short lines, 80 kB in all: over the request cap.
        many = {**postfix_request(ALICE), **{f"x{i}": "y" * 30 for i in range(2000)}}
        assert ask(sock, many) == "DUNNO"
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
    with server.connect() as sock:
        # Endless garbage with no end of request: dropped once past 1 MiB, without an answer.
        chunk = b"x" * 8192
        try:
            for _ in range(200):
                sock.sendall(chunk)
        except OSError:
            pass
        assert closed_by_server(sock)
    assert "request longer than 1048576 bytes" in server.wait_for_log("dropping a connection")
    with server.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE


def test_client_that_disconnects_mid_request(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    for cut in (1, 50, len(encode(postfix_request(ALICE))) - 1):
        with server.connect() as sock:
            sock.sendall(encode(postfix_request(ALICE))[:cut])
    server.wait_for_log("client closed the connection mid-request")
    with server.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE


def test_slow_client_is_cut_off_and_others_are_served_meanwhile(store: Store, start: Start) -> None:
    retire(store)
    server = start(request_timeout="1s")
    with server.connect() as slow, server.connect() as fast:
        slow.sendall(b"request=smtpd_access_policy\nprotocol_state=RC")
        began = time.monotonic()
        for _ in range(20):
            assert ask(fast, postfix_request(ALICE)) == REJECT_ALICE
        assert time.monotonic() - began < 1
        assert read_answer(slow) == b""  # closed after the request timeout, unanswered
        assert 0.8 < time.monotonic() - began < 5
    server.wait_for_log("too slow")


def test_idle_connections_are_kept_until_the_idle_timeout(store: Store, start: Start) -> None:
    retire(store)
    server = start(idle_timeout="2s", request_timeout="1s")
    with server.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
        time.sleep(1.2)  # longer than the request timeout: idle time between requests is not a request
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
        began = time.monotonic()
        assert sock.recv(1) == b""
        assert 1.5 < time.monotonic() - began < 5


def test_connection_cap_sends_the_longest_idle_connection_away(store: Store, start: Start) -> None:
    retire(store)
    server = start(max_connections=2)
    with server.connect() as first, server.connect() as second:
        assert ask(first, postfix_request(ALICE)) == REJECT_ALICE
        assert ask(second, postfix_request(ALICE)) == REJECT_ALICE
        # Clients that connect and say nothing must not lock smtpd out: the longest idle one goes.
        with server.connect() as third:
            assert closed_by_server(first)
            assert ask(third, postfix_request(ALICE)) == REJECT_ALICE
            assert ask(second, postfix_request(ALICE)) == REJECT_ALICE


def test_many_idle_clients_do_not_lock_smtpd_out(store: Store, start: Start) -> None:
    retire(store)
    server = start(max_connections=20)
    idle = [server.connect() for _ in range(30)]
    try:
        with server.connect() as postfix:
            assert ask(postfix, postfix_request(ALICE)) == REJECT_ALICE
    finally:
        for sock in idle:
            sock.close()
    assert "Traceback" not in server.log()


def test_one_tcp_client_holds_at_most_half_the_connections(store: Store, start: Start) -> None:
    retire(store)
    server = start(listen="127.0.0.1:0", max_connections=4)
    with server.connect() as first, server.connect() as second:
        assert ask(first, postfix_request(ALICE)) == REJECT_ALICE
        assert ask(second, postfix_request(ALICE)) == REJECT_ALICE
        # Two of four are open; a third from the same address makes room among its own.
        with server.connect() as third:
            assert ask(third, postfix_request(ALICE)) == REJECT_ALICE
            assert closed_by_server(first)
            assert ask(second, postfix_request(ALICE)) == REJECT_ALICE


def test_sighup_does_not_stop_the_server(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("SIGHUP")
    with server.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE


def test_a_quoted_local_part_is_the_same_retired_address(store: Store, start: Start) -> None:
    retire(store)
    server = start()
    with server.connect() as sock:
        assert ask(sock, postfix_request('"alice"@example.com')) == REJECT_ALICE
        assert ask(sock, postfix_request('"Alice"@EXAMPLE.com')) == REJECT_ALICE
        assert ask(sock, postfix_request('"al ice"@example.com')) == "DUNNO"


def test_reject_text_is_one_safe_line(store: Store, start: Start) -> None:
    retire(store, message="Gone.\r\naction=OK\r\n\r\naction=PERMIT\nJörg — “moved” " + "word " * 300)
    server = start()
    with server.connect() as sock:
        sock.sendall(encode(postfix_request(ALICE)))
        answer = read_answer(sock)
    assert answer.count(b"\n") == 2 and answer.isascii()
    action = action_of(answer)
    assert action.startswith('REJECT 5.1.6 Gone. action=OK action=PERMIT Jorg - "moved" word word')
    assert len(action) <= len("REJECT 5.1.6 ") + 200 and action.endswith("...")


def test_never_permits_whatever_it_is_sent(store: Store, start: Start) -> None:
    """Random requests, valid and not: the only answers are REJECT, DUNNO or the configured defer."""
    retire(store)
    server = start()
    chooser = random.Random(6)
    names = ["request", "protocol_state", "recipient", "sender", "client_address", "X", "", "a b"]
    values = ["smtpd_access_policy", "RCPT", ALICE, "DATA", "", "=", "OK", "PERMIT", "\x00", "é", "x" * 5000]
    answers: set[str] = set()
    with server.connect() as sock:
        for _ in range(300):
            lines = [
                f"{chooser.choice(names)}={chooser.choice(values)}" for _ in range(chooser.randint(0, 6))
            ]
            if chooser.random() < 0.3:
                lines = [
                    f"{k}={v}" for k, v in postfix_request(chooser.choice([ALICE, "x@example.com"])).items()
                ]
            sock.sendall(("\n".join(lines) + "\n\n").encode("utf-8"))
            action = action_of(read_answer(sock))
            answers.add(action.split(" ", 1)[0])
    assert answers <= {"REJECT", "DUNNO"} and "REJECT" in answers and "DUNNO" in answers


def test_sigterm_stops_cleanly(store: Store, make_config: ConfigFactory, short_dir: Path) -> None:
    retire(store)
    path = short_dir / "stop.sock"
    server = PolicyProcess(make_config(), f"unix:{path}").started()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    idle = server.connect()
    assert ask(idle, postfix_request(ALICE)) == REJECT_ALICE
    began = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - began < 5, "an idle connection must not hold up the stop"
    assert idle.recv(1) == b""
    idle.close()
    assert not path.exists()
    assert "policy: stopped" in server.log()


def test_stale_socket_is_replaced_but_a_live_server_is_not(
    store: Store, make_config: ConfigFactory, short_dir: Path
) -> None:
    retire(store)
    path = short_dir / "live.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves behind
    config = make_config()
    first = PolicyProcess(config, f"unix:{path}").started()
    second = PolicyProcess(config, f"unix:{path}")
    assert second.proc.wait(timeout=20) == 1
    assert second.stop() == 1
    assert "another server is listening" in second.log()
    with first.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
    assert first.stop() == 0


def test_tcp_listener_with_a_system_chosen_port(store: Store, start: Start) -> None:
    retire(store)
    server = start(listen="127.0.0.1:0")
    assert server.where.startswith("127.0.0.1:") and not server.where.endswith(":0")
    with server.connect() as sock:
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE


def test_refuses_to_start_on_an_unmigrated_database(make_config: ConfigFactory, short_dir: Path) -> None:
    (short_dir / "empty.sqlite3").touch()  # an empty SQLite database; a missing file is an outage
    config = make_config(database={"url": f"sqlite:///{short_dir / 'empty.sqlite3'}"})
    server = PolicyProcess(config, f"unix:{short_dir / 'p.sock'}")
    assert server.proc.wait(timeout=20) == 1
    assert server.stop() == 1
    assert "run `responder db upgrade`" in server.log()


@pytest.mark.parametrize(("on_error", "answer"), [("dunno", "DUNNO"), ("defer_if_permit", DEFER)])
def test_database_missing_then_back(start: Start, short_dir: Path, on_error: str, answer: str) -> None:
    """SQLite: the file's directory is not there (an unmounted volume); then it is."""
    where = short_dir / "volume"
    url = f"sqlite:///{where / 'responder.sqlite3'}"
    server = start(database=url, on_error=on_error)
    server.wait_for_log("until it is back")
    with server.connect() as sock:
        for _ in range(3):
            assert ask(sock, postfix_request(ALICE)) == answer
        where.mkdir()
        store = Store.open(url)
        store.upgrade()
        retire(store)
        store.close()
        assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
        assert ask(sock, postfix_request("bob@example.com")) == "DUNNO"
    assert server.log().count("lookup failed") == 1, "one line per minute, not one per request"


@pytest.mark.backend
@pytest.mark.parametrize(("on_error", "answer"), [("dunno", "DUNNO"), ("defer_if_permit", DEFER)])
def test_postgresql_outage(start: Start, databases: Databases, on_error: str, answer: str) -> None:
    """PostgreSQL behind a proxy that drops every connection, as a crashed server or a broken link does."""
    server_url("postgresql")
    url = make_url(databases.migrated("postgresql"))
    store = Store.open(url.render_as_string(hide_password=False))
    retire(store)
    store.close()
    proxy = FaultProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = start(database=through, on_error=on_error, lookup_timeout="2s")
        with server.connect() as sock:
            assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
            proxy.cut()
            began = time.monotonic()
            for _ in range(5):
                assert ask(sock, postfix_request(ALICE)) == answer
            assert time.monotonic() - began < 15
            proxy.restore()
            assert ask(sock, postfix_request(ALICE)) == REJECT_ALICE
        assert "lookup failed" in server.log()
    finally:
        proxy.close()
