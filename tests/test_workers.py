"""`responder serve` with worker processes: sessions, pipelining, a worker killed, reloads, kill -9 faults."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from responder.decide.context import utcnow
from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import LIMITS_OFF, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.sink import SmtpSink

ALICE = "alice@example.com"
ServiceFactory = Callable[..., ServiceProcess]


def _message(sender: str, number: int = 1) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: {ALICE}\r\nSubject: question {number}\r\n"
        f"Message-ID: <{number}.{sender}>\r\n\r\nHello.\r\n"
    ).encode()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lmtp.sock"


@pytest.fixture
def start_service(make_config: ConfigFactory, socket_path: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(config: Path | None = None, **sections: dict[str, object]) -> ServiceProcess:
        if config is None:
            server = {"socket": f"unix:{socket_path}", "processes": 2, **sections.pop("server", {})}
            config = make_config(server=server, limits=LIMITS_OFF, **sections)
        service = ServiceProcess(config, socket_path, tmp_path / f"service-{len(started)}.log")
        started.append(service)  # before it starts: one that never gets ready is stopped all the same
        return service.start()

    yield start
    for service in started:
        service.stop()


def _workers(service: ServiceProcess) -> list[int]:
    assert service.process is not None
    pid = service.process.pid
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _wait_workers(service: ServiceProcess, count: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _workers(service)
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{_workers(service)} are not {count} workers:\n{service.log()}")


def _wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state == "Z":
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def test_many_transactions_on_one_session_and_pipelined(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink
) -> None:
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    for number in range(10):
        sender = f"plain{number}@example.org"
        [(code, text)] = client.send_message(sender, [ALICE], _message(sender, number))
        assert (code, "reply" in text) == (250, True)
    # Pipelined: each group MAIL, RCPT, DATA goes in one write, with the previous message's data.
    pending = b""
    for number in range(10):
        sender = f"piped{number}@example.org"
        client.sock.sendall(pending + f"MAIL FROM:<{sender}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode())
        if pending:
            assert client.reply()[0] == 250  # the previous message's status
        assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
        pending = _message(sender, number) + b".\r\n"
    client.sock.sendall(pending + b"QUIT\r\n")
    assert client.reply()[0] == 250
    assert client.reply()[0] == 221
    client.sock.close()
    got = sink.wait_for(20)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(
        [f"plain{n}@example.org" for n in range(10)] + [f"piped{n}@example.org" for n in range(10)]
    )


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def test_a_burst_of_connections_is_shared_among_the_workers(
    start_service: ServiceFactory, socket_path: Path
) -> None:
    # An MTA opens its LMTP connections together and keeps them: one worker taking them all would
    # leave the other idle for as long as they last.
    service = start_service()
    workers = _wait_workers(service, 2)
    before = {pid: _sockets(pid) for pid in workers}
    with contextlib.ExitStack() as opened:
        clients = [opened.enter_context(contextlib.closing(LmtpClient(socket_path))) for _ in range(8)]
        for client in clients:  # all queued before any is answered
            client.greet()
        taken = {pid: _sockets(pid) - before[pid] for pid in workers}
    assert sum(taken.values()) == 8, taken
    assert min(taken.values()) >= 3, taken
    # Closed connections are counted off: the next burst is shared again.
    deadline = time.monotonic() + 20
    while any(_sockets(pid) > before[pid] for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.ExitStack() as opened:
        clients = [opened.enter_context(contextlib.closing(LmtpClient(socket_path))) for _ in range(4)]
        for client in clients:
            client.greet()
        taken = {pid: _sockets(pid) - before[pid] for pid in workers}
    assert sorted(taken.values()) == [2, 2], taken


def test_a_killed_worker_is_replaced(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink
) -> None:
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    first = _wait_workers(service, 2)
    os.kill(first[0], signal.SIGKILL)
    service.wait_log("killed by signal 9): replacing it")
    after = _wait_workers(service, 2)
    assert first[0] not in after and first[1] in after
    for number in range(6):  # both workers take mail
        client = LmtpClient(socket_path)
        client.greet()
        sender = f"s{number}@example.org"
        assert client.send_message(sender, [ALICE], _message(sender))[0][0] == 250
        client.close()
    assert len(sink.wait_for(6)) == 6


def test_sighup_replaces_the_workers_one_by_one_and_a_broken_file_keeps_them(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink
) -> None:
    service = start_service()
    vacation_set(service.config, ALICE, "--message", "Away.")
    old = set(_wait_workers(service, 2))
    second = SmtpSink().start()
    try:
        text = service.config.read_text(encoding="utf-8")
        service.config.write_text(
            text.replace(f"port = {sink.port}", f"port = {second.port}"), encoding="utf-8"
        )
        service.send_signal(signal.SIGHUP)
        service.wait_log("configuration reloaded")
        for pid in old:
            _wait_gone(pid)
        new = set(_wait_workers(service, 2))
        assert not new & old
        client = LmtpClient(socket_path)
        client.greet()
        assert client.send_message("a@example.org", [ALICE], _message("a@example.org"))[0][0] == 250
        client.close()
        assert [m.rcpt_tos for m in second.wait_for(1)] == [["a@example.org"]]
        service.config.write_text("[server\n", encoding="utf-8")
        service.send_signal(signal.SIGHUP)
        service.wait_log("reload failed")
        assert set(_workers(service)) == new
    finally:
        second.stop()
    assert sink.messages == []


# -- kill -9 at random moments ------------------------------------------------------------------


class Run:
    """Many LMTP clients, each sending its share of the messages one after another, retrying a
    message that got 451 or a dropped connection until it gets 250."""

    def __init__(self, socket_path: Path, total: int, clients: int) -> None:
        self.socket_path = socket_path
        self.total = total
        self.statuses: dict[int, list[str]] = {n: [] for n in range(total)}
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> Run:
        for thread in self.threads:
            thread.start()
        return self

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1

    def _client(self) -> None:
        client: LmtpClient | None = None
        number = self._take()
        while number is not None and not self.stop.is_set():
            try:
                if client is None:
                    client = LmtpClient(self.socket_path, timeout=60)
                    client.greet()
                sender = f"m{number}@example.org"
                [(code, _text)] = client.send_message(sender, [ALICE], _message(sender, number))
                status = str(code)
            except (OSError, AssertionError, ValueError):
                status = "dropped"
                if client is not None:
                    client.sock.close()
                client = None
                time.sleep(0.05)  # the service may be restarting
            self.statuses[number].append(status)
            if status == "250":
                with self.lock:
                    self.done += 1
                number = self._take()
            elif status == "451":
                time.sleep(0.2)
        if client is not None:
            client.close()

    def wait(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(max(0.0, timeout))
        self.stop.set()


FAULT_MESSAGES = int(os.environ.get("RESPONDER_TEST_FAULT_MESSAGES", "10000"))


@pytest.mark.race
@pytest.mark.timeout(1800)
def test_kill_9_of_a_worker_the_supervisor_or_everything_loses_and_doubles_nothing(
    start_service: ServiceFactory, make_config: ConfigFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    config = make_config(
        server={"socket": f"unix:{socket_path}", "processes": 2, "stop_timeout": "5s"},
        limits=LIMITS_OFF,
        deliver={"deadline": "10s"},
        outbox={"lease": "3s", "backoff_min": "0.2s", "backoff_max": "1s"},
    )
    vacation_set(config, ALICE, "--message", "Away.")
    service = start_service(config)
    total = FAULT_MESSAGES
    run = Run(socket_path, total, clients=8).start()
    rng = random.Random(20261201)
    kills: Counter[str] = Counter()
    # A fault at a random moment within each tenth of the run; the whole service is killed early on,
    # so that the claims its workers left pending (taken over after the stale margin, deadline + 120 s)
    # are free before the run ends.
    plan = ["all", "worker", "all", "supervisor", "worker", "worker", "supervisor", "worker", "worker"]
    for step, fault in enumerate(plan, start=1):
        target = total * step // (len(plan) + 1) + rng.randrange(max(1, total // 20))
        while run.done < target and any(t.is_alive() for t in run.threads):
            time.sleep(0.01)
        time.sleep(rng.random() * 0.05)
        workers = _workers(service)
        assert service.process is not None
        if fault == "worker" and workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
        elif fault == "supervisor":
            service.process.kill()
            service.process.wait()
            for pid in workers:  # they notice, finish their messages and exit
                _wait_gone(pid)
            service.stop()
            service = start_service(config)
        else:
            assert service.process is not None
            service.process.kill()
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            service.process.wait()
            for pid in workers:
                _wait_gone(pid)
            service.stop()
            service = start_service(config)
        kills[fault] += 1
    run.wait(timeout=600)
    assert all(s[-1] == "250" for s in run.statuses.values()), "messages never decided"
    # Every response owed is sent before the outbox is empty; then nothing more arrives.
    store = Store.open(db_url)
    try:
        deadline = time.monotonic() + 120
        while store.outbox_stats(utcnow())[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.outbox_stats(utcnow())[0] == 0
        time.sleep(1)
        rows = store.outbox_rows(limit=total * 2)
    finally:
        store.close()
    sent = Counter(m.rcpt_tos[0] for m in sink.received())
    owed = Counter(row.rcpt_to for row in rows)
    unconfirmed = {row.rcpt_to for row in rows if row.last_error.startswith("sender stopped")}
    assert max(owed.values()) == 1, "a message queued twice"
    assert max(sent.values()) == 1, "a response sent twice"
    assert set(sent) <= set(owed)
    missing = set(owed) - set(sent)
    # Only a response whose final dot was (about to be) written when its sender died may be missing.
    assert missing <= unconfirmed
    assert len(owed) == total
    retried = sum(1 for s in run.statuses.values() if len(s) > 1)
    print(
        f"\n{total} messages, kills {dict(kills)}: {retried} retried after 451 or a dropped connection, "
        f"{len(sent)} responses sent once, {len(missing)} lost in the final-dot window, 0 sent twice"
    )
