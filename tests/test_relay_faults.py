"""Relay faults around the end of DATA, as the hook meets them: never a second reply, never a bounce.

Once the final dot is written the relay may have queued the reply, so a lost or late answer counts
as sent; before it, and on a 4xx answer, the claim is given back and the hook exits 75 for the MTA's
retry. Every relay step ends before the hook's deadline, QUIT included.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from responder.config.load import settings_from_mapping
from responder.errors import DeadlineExceeded, RelayUnconfirmed
from responder.mail.reply import Outgoing
from responder.smtp.transport import SmtpTransport
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, hook_env, run_hook, sample, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.sink import SmtpSink

SENDER = "bob@example.org"
RCPT = "alice@example.com"
# Short, yet room for the hook to reach DATA on a loaded machine.
DEADLINE = 3.0
KILL_DEADLINE = 5.0


class FaultyRelay:
    """An SMTP relay on loopback that fails at the end of DATA as told by ``mode``.

    ``accept`` answers 250; ``drop`` closes the connection right after the final dot; ``hang``
    never answers it; ``late`` answers 250 after ``delay`` seconds; ``4xx`` / ``5xx`` refuse the
    data; ``drop-at-data`` closes the connection on the DATA command, before any data, and
    ``stall-at-data`` never answers the DATA command. Every final
    dot that arrives is counted in ``received`` before anything is answered (a real relay has
    queued the message by then); ``accepted`` counts the 250s. ``quit_hangs`` never answers QUIT.
    """

    def __init__(self, mode: str = "accept", delay: float = 0.0, quit_hangs: bool = False) -> None:
        self.mode = mode
        self.delay = delay
        self.quit_hangs = quit_hangs
        self.received: list[bytes] = []
        self.ehlo: list[str] = []
        self.accepted = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            worker = threading.Thread(target=self._session, args=(conn,), daemon=True)
            worker.start()
            self.threads.append(worker)

    def _session(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError), conn.makefile("rb") as file:
            conn.sendall(b"220 faulty.test ESMTP\r\n")
            while line := file.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.ehlo.append(line[5:].strip().decode())
                    conn.sendall(b"250-faulty.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    if self.mode == "drop-at-data":
                        return
                    if self.mode == "stall-at-data":
                        self.stopping.wait()
                        return
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while (part := file.readline()) not in (b".\r\n", b""):
                        data += part
                    with self.lock:
                        self.received.append(data)
                    if not self._answer_data(conn):
                        return
                elif verb == b"QUIT":
                    if self.quit_hangs:
                        self.stopping.wait()
                        return
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def _answer_data(self, conn: socket.socket) -> bool:
        """Answer the final dot as ``mode`` says; False when the session ends here."""
        if self.mode == "drop":
            return False
        if self.mode == "hang":
            self.stopping.wait()
            return False
        if self.mode == "4xx":
            conn.sendall(b"451 4.3.0 queue file write error\r\n")
            return True
        if self.mode == "5xx":
            conn.sendall(b"554 5.6.0 message content rejected\r\n")
            return True
        if self.mode == "late" and self.stopping.wait(self.delay):
            return False
        conn.sendall(b"250 2.0.0 queued\r\n")
        with self.lock:
            self.accepted += 1
        return True

    def close(self) -> None:
        self.stopping.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it there.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)


@pytest.fixture
def relay() -> Iterator[FaultyRelay]:
    server = FaultyRelay()
    yield server
    server.close()


def _config(make_config: ConfigFactory, relay: FaultyRelay, deadline: float = 30) -> Path:
    # smtp.timeout far beyond the deadline: the deadline alone must end the wait.
    config = make_config(smtp={"port": relay.port, "timeout": "30s"}, deliver={"deadline": f"{deadline:g}s"})
    vacation_set(config, RCPT, "--message", "I am away.")
    return config


def _deliver(config: Path) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """One delivery attempt of the same message, as the MTA's first try and each retry; its wall time."""
    started = time.monotonic()
    result = run_hook(config, *deliver_args(SENDER, RCPT, queue_id="4ABC"), stdin=sample("personal.eml"))
    return result, time.monotonic() - started


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """The hook's deadline as it fires: DeadlineExceeded raised in the main thread by SIGALRM."""

    def expire(_signum: int, _frame: object) -> None:
        raise DeadlineExceeded(f"deadline of {seconds:g}s passed")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _log_line(result: subprocess.CompletedProcess[bytes], needle: str) -> str:
    lines = [line for line in result.stderr.decode().splitlines() if needle in line]
    assert lines, result.stderr.decode()
    return lines[0]


@pytest.mark.parametrize(
    ("mode", "delay"),
    [("drop", 0.0), ("hang", 0.0), ("late", DEADLINE + 3)],
    ids=["dropped-after-the-dot", "never-answered", "answered-after-the-deadline"],
)
def test_lost_answer_after_the_final_dot_counts_as_sent(
    make_config: ConfigFactory, relay: FaultyRelay, mode: str, delay: float
) -> None:
    relay.mode, relay.delay = mode, delay
    config = _config(make_config, relay, deadline=DEADLINE)
    first, elapsed = _deliver(config)
    assert first.returncode == 0, first.stderr.decode()
    line = _log_line(first, "action=reply")
    assert ": WARNING " in line and "counted as sent" in line
    # The whole run ends within the deadline and a second, however long the relay holds on.
    assert elapsed < DEADLINE + 1, f"{elapsed:.1f}s"
    # The MTA would not retry after 0; were it to deliver the message again, nothing goes out again.
    for _ in range(2):
        again, _elapsed = _deliver(config)
        assert again.returncode == 0, again.stderr.decode()
        assert b"reason=interval" in again.stderr
    assert len(relay.received) == 1


def test_hook_killed_while_the_relay_holds_the_data_never_sends_twice(
    make_config: ConfigFactory, relay: FaultyRelay
) -> None:
    """Killed (by the MTA's time limit, the OOM killer) after the final dot: the retry must not send."""
    relay.mode = "hang"
    # Room to reach DATA on a loaded machine; the kill comes long before the deadline.
    config = _config(make_config, relay, deadline=KILL_DEADLINE)
    command = [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(SENDER, RCPT)]
    hook = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=hook_env()
    )
    assert hook.stdin is not None
    hook.stdin.write(sample("personal.eml"))
    hook.stdin.close()
    give_up = time.monotonic() + 30
    while not relay.received and time.monotonic() < give_up:
        time.sleep(0.01)
    hook.kill()
    assert hook.wait(timeout=30) == -9
    assert len(relay.received) == 1
    # A claim whose attempt died may be taken over once the deadline has passed: wait that long.
    time.sleep(KILL_DEADLINE + 0.5)
    relay.mode = "accept"
    retry, _elapsed = _deliver(config)
    assert retry.returncode == 0, retry.stderr.decode()
    assert b"reason=interval" in retry.stderr
    assert len(relay.received) == 1


def test_4xx_to_the_data_defers_and_the_retry_answers_once(
    make_config: ConfigFactory, relay: FaultyRelay
) -> None:
    relay.mode = "4xx"
    config = _config(make_config, relay)
    codes = [_deliver(config)[0].returncode for _ in range(3)]
    assert codes == [75, 75, 75]
    assert (len(relay.received), relay.accepted) == (3, 0)
    relay.mode = "accept"
    assert [_deliver(config)[0].returncode for _ in range(2)] == [0, 0]
    assert (len(relay.received), relay.accepted) == (4, 1)


def test_connection_lost_before_the_data_defers_and_the_retry_answers(
    make_config: ConfigFactory, relay: FaultyRelay
) -> None:
    relay.mode = "drop-at-data"
    config = _config(make_config, relay)
    first, _elapsed = _deliver(config)
    assert first.returncode == 75, first.stderr.decode()
    assert relay.received == []
    relay.mode = "accept"
    assert _deliver(config)[0].returncode == 0
    assert relay.accepted == 1


def test_5xx_to_the_data_is_an_error_and_sends_nothing(
    make_config: ConfigFactory, relay: FaultyRelay
) -> None:
    relay.mode = "5xx"
    config = _config(make_config, relay)
    result, _elapsed = _deliver(config)
    assert result.returncode == 0
    line = _log_line(result, "reason=relay-refused")
    assert ": ERROR " in line and "at end of data" in line and "content filters" in line
    relay.mode = "accept"
    # Nothing went out, so nothing was used up: the same message delivered again is answered.
    assert _deliver(config)[0].returncode == 0
    assert relay.accepted == 1


def test_quit_that_hangs_does_not_hold_the_hook(make_config: ConfigFactory, relay: FaultyRelay) -> None:
    relay.quit_hangs = True
    config = _config(make_config, relay, deadline=60)
    result, elapsed = _deliver(config)
    assert result.returncode == 0, result.stderr.decode()
    assert b"action=reply" in result.stderr and b"counted as sent" not in result.stderr
    assert relay.accepted == 1
    # QUIT gets one second; smtp.timeout (30 s) and the deadline (60 s) are far off.
    assert elapsed < 5, f"{elapsed:.1f}s"


@pytest.mark.parametrize(
    ("mode", "raised"),
    [("hang", RelayUnconfirmed), ("stall-at-data", DeadlineExceeded)],
    ids=["after-the-final-dot", "before-the-data"],
)
def test_the_hooks_alarm_during_the_conversation(
    relay: FaultyRelay, mode: str, raised: type[Exception]
) -> None:
    """The hook's own alarm, were the relay steps to overrun: counted as sent only after the final dot."""
    relay.mode = mode
    settings = settings_from_mapping({"smtp": {"port": relay.port, "timeout": "30s"}})
    message = EmailMessage()
    message["Subject"] = "Auto: hello"
    message.set_content("I am away.")
    started = time.monotonic()
    with pytest.raises(raised, match="deadline of 1s passed"), _alarm(1.0):
        SmtpTransport(settings.smtp).send(Outgoing("", SENDER, message))
    assert time.monotonic() - started < 2
    assert len(relay.received) == (1 if mode == "hang" else 0)


def test_the_data_is_dot_stuffed_and_arrives_unchanged(sink: SmtpSink) -> None:
    """DATA is written here, not by aiosmtplib: lines of dots and the last line must survive."""
    settings = settings_from_mapping({"smtp": {"port": sink.port}})
    message = EmailMessage()
    message["Subject"] = "Auto: dots"
    body = ".\n..\n.leading dot\nmiddle . dot\n.\nno newline at the end"
    message.set_content(body)
    outgoing = Outgoing("", SENDER, message)
    # Unstuffed, this line alone would end the data early.
    assert b"\r\n.\r\n" in outgoing.as_bytes()
    SmtpTransport(settings.smtp).send(outgoing)
    [received] = sink.wait_for(1)
    content = received.message.get_content()
    assert content.replace("\r\n", "\n") == body + "\n"


def test_an_answer_that_comes_at_once_after_the_final_dot_is_read(relay: FaultyRelay) -> None:
    """On uvloop the relay's 250 can arrive before the task awaiting it first runs: never missed."""
    import uvloop

    from responder.daemons.lmtp_service import PooledSmtpTransport

    settings = settings_from_mapping({"smtp": {"port": relay.port, "timeout": "2s"}})
    message = EmailMessage()
    message["Subject"] = "Auto: hello"
    message.set_content("I am away.")

    async def send_all() -> None:
        transport = PooledSmtpTransport(settings.smtp, asyncio.get_running_loop(), keep=1)
        try:
            for _ in range(20):
                await transport.send_pooled(Outgoing("", SENDER, message))
        finally:
            transport.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(send_all())
    assert (len(relay.received), relay.accepted) == (20, 20)


def test_service_never_sends_twice_when_a_reused_connection_drops_after_the_dot(
    make_config: ConfigFactory, relay: FaultyRelay, tmp_path: Path
) -> None:
    """The service keeps relay connections open; one lost after the final dot is not sent again."""
    socket_path = tmp_path / "lmtp.sock"
    config = make_config(smtp={"port": relay.port}, server={"socket": f"unix:{socket_path}"})
    vacation_set(config, RCPT, "--message", "I am away.")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        client = LmtpClient(socket_path)
        client.greet()
        for number, mode in enumerate(["accept", "drop"]):
            relay.mode = mode
            sender = f"s{number}@example.org"
            data = (
                f"From: {sender}\nTo: {RCPT}\nSubject: q{number}\nMessage-ID: <{number}@example.org>\n\nHi.\n"
            )
            [(code, text)] = client.send_message(sender, [RCPT], data.encode())
            assert (code, "reply" in text) == (250, True), text
        client.close()
    finally:
        service.stop()
    # The second reply went over the connection the first one left open; it was not sent again.
    assert len(relay.received) == 2
    assert "counted as sent" in service.log()


def test_ehlo_names_the_responding_domain_without_asking_dns(
    make_config: ConfigFactory, relay: FaultyRelay
) -> None:
    """smtp.hostname empty: the responding address's domain, as for the Message-ID (no getfqdn lookup)."""
    config = make_config(smtp={"port": relay.port, "hostname": ""})
    vacation_set(config, RCPT, "--message", "I am away.")
    result, _elapsed = _deliver(config)
    assert result.returncode == 0, result.stderr.decode()
    assert relay.ehlo == ["example.com"]
