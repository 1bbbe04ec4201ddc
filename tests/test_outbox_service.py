"""The service's outbox: 250 once the response is committed; relay faults retried, given up, audited."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import LIMITS_OFF, run_admin, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.sink import SmtpSink

ALICE = "alice@example.com"
ServiceFactory = Callable[..., ServiceProcess]
# Retries every fraction of a second, so that "a while" fits in a test.
FAST = {"backoff_min": "0.2s", "backoff_max": "0.5s", "lease": "5s"}


def _message(sender: str, number: int = 1) -> bytes:
    return (
        f"From: <{sender}>\nTo: {ALICE}\nSubject: question {number}\n"
        f"Message-ID: <{number}.{sender}>\n\nHello.\n"
    ).encode()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lmtp.sock"


@pytest.fixture
def start_service(make_config: ConfigFactory, socket_path: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(**sections: dict[str, object]) -> ServiceProcess:
        server = {"socket": f"unix:{socket_path}", "processes": 2, **sections.pop("server", {})}
        outbox = {**FAST, **sections.pop("outbox", {})}
        config = make_config(server=server, outbox=outbox, **sections)
        service = ServiceProcess(config, socket_path, tmp_path / f"service-{len(started)}.log")
        started.append(service)  # before it starts: one that never gets ready is stopped all the same
        return service.start()

    yield start
    for service in started:
        service.stop()


def _reasons(db_url: str) -> Counter[tuple[str, str | None]]:
    store = Store.open(db_url)
    try:
        return Counter((row.action, row.reason) for row in store.decisions(limit=10000))
    finally:
        store.close()


def _outbox(config: Path) -> dict[str, object]:
    result = run_admin(config, "outbox", "show", "--json")
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _deliver(socket_path: Path, senders: list[str]) -> list[int]:
    client = LmtpClient(socket_path)
    client.greet()
    codes = [client.send_message(s, [ALICE], _message(s))[0][0] for s in senders]
    client.close()
    return codes


def test_relay_down_for_a_while_then_up_defers_nothing_and_sends_each_once(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    port = sink.port
    sink.stop()
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    senders = [f"s{n}@example.org" for n in range(20)]
    # The relay is down: every message is accepted all the same, its reply owed in the outbox.
    assert _deliver(socket_path, senders) == [250] * 20
    service.wait_log("not sent (attempt 2")
    shown = _outbox(service.config)
    assert shown["owed"] == 20
    back = SmtpSink(port=port).start()
    try:
        _wait(lambda: len(back.received()) >= 20)
        _wait(lambda: _outbox(service.config)["owed"] == 0)
        time.sleep(0.5)  # nothing more arrives
        assert sorted(m.rcpt_tos[0] for m in back.received()) == sorted(senders)
    finally:
        back.stop()
    assert _reasons(db_url) == Counter({("reply", None): 20})
    assert "action=defer" not in service.log()


@pytest.mark.race
def test_relay_down_for_a_minute_while_mail_arrives_then_up_sends_each_owed_once(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    """The outage of the issue, in real time: a minute of mail accepted with the relay down."""
    port = sink.port
    sink.stop()
    # Backoff of seconds rather than minutes: the retries that fail during the minute are many, and
    # the one after the relay is back comes within the test's patience. A hundred replies from one
    # recipient and one sender domain are more than the default limits let through.
    service = start_service(outbox={"backoff_min": "1s", "backoff_max": "4s"}, limits=LIMITS_OFF)
    vacation_set(service.config, ALICE, "--message", "Away.")
    senders: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 60:
        batch = [f"m{len(senders) + n}@example.org" for n in range(5)]
        assert _deliver(socket_path, batch) == [250] * 5
        senders += batch
        time.sleep(3)  # the arrivals spread over the minute
    shown = _outbox(service.config)
    assert shown["owed"] == len(senders) >= 50
    store = Store.open(db_url)
    try:
        tried = max(row.attempts for row in store.outbox_rows(limit=1000))
    finally:
        store.close()
    assert tried >= 10  # the first responses were tried again and again throughout the minute
    back = SmtpSink(port=port).start()
    try:
        _wait(lambda: _outbox(service.config)["owed"] == 0, timeout=60)
        time.sleep(0.5)  # nothing more arrives
        assert sorted(m.rcpt_tos[0] for m in back.received()) == sorted(senders)
    finally:
        back.stop()
    assert _reasons(db_url) == Counter({("reply", None): len(senders)})
    assert "action=defer" not in service.log()


def test_a_relay_answering_4xx_is_tried_again_and_a_5xx_is_final_and_audited(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    sink.data_reply = "451 4.3.0 try later"
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    assert _deliver(socket_path, ["bob@example.org"]) == [250]
    service.wait_log("relay answered 451")
    sink.data_reply = "554 5.7.1 content refused"
    service.wait_log("reason=relay-refused")
    _wait(lambda: _reasons(db_url)[("drop", "relay-refused")] == 1)
    rows = _outbox(service.config)["rows"]
    assert isinstance(rows, list) and [r["state"] for r in rows] == ["failed"]
    assert "check the relay's message size limit" in rows[0]["last_error"]
    # The claim was given back with the refusal: the sender's next message is answered.
    sink.data_reply = ""
    assert _deliver(socket_path, ["bob@example.org"]) == [250]
    assert len(sink.wait_for(1)) == 1


def test_a_response_never_taken_is_given_up_at_max_age_then_retried_by_the_admin(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    port = sink.port
    sink.stop()
    service = start_service(outbox={"max_age": "1s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    assert _deliver(socket_path, ["bob@example.org"]) == [250]
    service.wait_log("reason=relay-gave-up")
    assert _reasons(db_url) == Counter({("reply", None): 1, ("drop", "relay-gave-up"): 1})
    rows = _outbox(service.config)["rows"]
    assert isinstance(rows, list) and [r["state"] for r in rows] == ["gave-up"]
    back = SmtpSink(port=port).start()
    try:
        assert run_admin(service.config, "outbox", "retry", str(rows[0]["id"])).returncode == 0
        assert len(back.wait_for(1)) == 1
        _wait(lambda: _outbox(service.config)["rows"][0]["state"] == "sent")  # type: ignore[index]
        purge = run_admin(service.config, "outbox", "purge", str(rows[0]["id"]))
        assert purge.returncode == 0 and b"1 finished" in purge.stdout
        assert _outbox(service.config)["rows"] == []
    finally:
        back.stop()


def test_database_unusable_is_451_and_the_outbox_drains_after(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    port = sink.port
    sink.stop()
    service = start_service(database={"busy_timeout": "0.3s"})
    vacation_set(service.config, ALICE, "--message", "Away.")
    assert _deliver(socket_path, ["a@example.org", "b@example.org"]) == [250, 250]
    lock = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    back = SmtpSink(port=port).start()
    try:
        # Nothing can be promised while the database cannot be written: 451, the MTA keeps it.
        assert _deliver(socket_path, ["c@example.org"]) == [451]
        time.sleep(1)
        # The relay is back but nothing can be marked sent: nothing goes out either.
        assert back.received() == []
        lock.rollback()
        lock.close()
        _wait(lambda: len(back.received()) >= 2)
        # The MTA's retry of the deferred message is decided again and answered once.
        assert _deliver(socket_path, ["c@example.org"]) == [250]
        _wait(lambda: len(back.received()) >= 3)
        time.sleep(0.5)
        assert sorted(m.rcpt_tos[0] for m in back.received()) == [
            "a@example.org",
            "b@example.org",
            "c@example.org",
        ]
    finally:
        back.stop()
    assert _reasons(db_url)[("reply", None)] == 3


def test_messages_of_one_sender_at_once_get_one_reply_and_the_others_are_suppressed(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    service = start_service(limits=LIMITS_OFF)
    vacation_set(service.config, ALICE, "--message", "Away.", "--interval", "7d")
    bob = "bob@example.org"

    def deliver(number: int) -> int:
        client = LmtpClient(socket_path)
        client.greet()
        code = client.send_message(bob, [ALICE], _message(bob, number))[0][0]
        client.close()
        return code

    # Sixteen at a time over both processes: many decide while another's response is not yet committed.
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(deliver, range(48)))
    assert codes == [250] * 48
    _wait(lambda: _outbox(service.config)["owed"] == 0)
    assert _reasons(db_url) == Counter({("reply", None): 1, ("suppress", "interval"): 47})
    assert len(sink.received()) == 1
    assert "action=defer" not in service.log()
