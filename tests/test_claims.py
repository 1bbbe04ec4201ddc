"""Interval claims under concurrency: distinct messages, pending claims of others, stale takeover."""

from __future__ import annotations

import datetime as dt
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from responder.decide.context import CLAIM_STALE_MARGIN
from responder.store.database import REPLIES, ClaimRequest, Store
from tests.conftest import ConfigFactory
from tests.dnsserver import DNSServer
from tests.helpers import LIMITS_OFF, deliver_args, hook_env
from tests.sink import SmtpSink
from tests.test_limits_race import RCPTS, _outcomes, _race, _vacations

BOB = "bob@example.org"
ALICE = RCPTS[0]
GOOD_IP = "192.0.2.10"
FORGED_IP = "203.0.113.66"
HOLDER = "a" * 32  # the token of the claim another delivery holds


@pytest.fixture
def db_url(backend_url: str) -> str:
    return backend_url


class Hook:
    """One `responder deliver` process, its log read line by line as it runs."""

    def __init__(self, config: Path, message: bytes, client: str = "") -> None:
        args = deliver_args(BOB, ALICE, client_address=client, helo="mail.example.org")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "responder", "--config", str(config), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=hook_env(),
        )
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.write(message)
        self.proc.stdin.close()
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line.decode())
        self._lines.put(None)

    def wait_for_line(self, part: str, timeout: float = 60) -> None:
        """Return once the hook has logged a line containing ``part``."""
        end = time.monotonic() + timeout
        while not any(part in line for line in self.lines):
            line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            assert line is not None, f"the hook ended without logging {part!r}: {self.lines}"
            self.lines.append(line)

    def finish(self) -> tuple[int, str]:
        """The exit status and the whole log, once the hook has ended."""
        code = self.proc.wait(timeout=120)
        while (line := self._lines.get(timeout=10)) is not None:
            self.lines.append(line)
        return code, "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


HookFactory = Callable[..., Hook]


@pytest.fixture
def start() -> Iterator[HookFactory]:
    """Start hooks; any still running when the test ends is killed."""
    started: list[Hook] = []

    def make(config: Path, message: bytes, client: str = "") -> Hook:
        started.append(Hook(config, message, client))
        return started[-1]

    yield make
    for hook in started:
        hook.stop()


def _message(number: int, extra: str = "") -> bytes:
    return (
        f"{extra}From: {BOB}\r\nTo: {ALICE}\r\nSubject: hello {number}\r\n"
        f"Message-ID: <m{number}@example.org>\r\n\r\nHi.\r\n"
    ).encode()


def _hold_claim(db_url: str, message_key: str = "<held@example.org>", age: float = 0.0) -> Store:
    """Another delivery's pending claim for BOB, taken ``age`` seconds ago; the store it was taken in."""
    store = Store.open(db_url)
    vacation_id = store.list_vacations()[0].id
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    week, stale = dt.timedelta(days=7), dt.timedelta(days=1)
    assert (
        store.claim(ClaimRequest(REPLIES, vacation_id, BOB, message_key, now, week, stale, HOLDER)) == "won"
    )
    return store


@pytest.mark.race
@pytest.mark.parametrize("interval", [0, 7 * 86400])
def test_twelve_concurrent_messages_of_one_sender(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, interval: int
) -> None:
    """Every one answered with a zero interval; exactly one within a week's."""
    config = make_config(limits=LIMITS_OFF, reply={"min_interval": "0s"})
    _vacations(db_url, ALICE, interval=interval)
    runs = _race(config, [(BOB, ALICE, f"m{i}@example.org") for i in range(12)])
    assert [r.returncode for r in runs] == [0] * 12, [r.stderr for r in runs if r.returncode]
    # Every hook has ended, and the sink records a message before it accepts it.
    replies = Counter(str(m.message["In-Reply-To"]) for m in sink.messages)
    if interval == 0:
        assert _outcomes(db_url) == [("reply", "")] * 12
        assert replies == {f"<m{i}@example.org>": 1 for i in range(12)}
    else:
        assert _outcomes(db_url) == sorted([("reply", "")] + [("suppress", "interval")] * 11)
        assert list(replies.values()) == [1]


@pytest.mark.parametrize("outcome", ["released", "confirmed"])
def test_a_pending_claim_of_another_message_is_waited_for(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, start: HookFactory, outcome: str
) -> None:
    config = make_config(limits=LIMITS_OFF)
    _vacations(db_url, ALICE)
    holder = _hold_claim(db_url)
    vacation_id = holder.list_vacations()[0].id
    hook = start(config, _message(1))
    hook.wait_for_line("waiting for another delivery's pending reply claim for <bob@example.org>")
    assert sink.messages == []
    if outcome == "released":
        holder.release_claim(REPLIES, vacation_id, BOB, HOLDER)
    else:
        holder.confirm_claim(REPLIES, vacation_id, BOB, HOLDER)
    holder.close()
    code, log = hook.finish()
    assert code == 0, log
    if outcome == "released":
        assert "action=reply" in log
        assert [str(m.message["In-Reply-To"]) for m in sink.messages] == ["<m1@example.org>"]
    else:
        assert "action=suppress reason=interval" in log
        assert sink.messages == []


def test_a_claim_still_pending_at_the_deadline_defers_and_the_retry_answers(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, start: HookFactory
) -> None:
    config = make_config(limits=LIMITS_OFF, deliver={"deadline": "2s"})
    _vacations(db_url, ALICE)
    holder = _hold_claim(db_url)
    code, log = start(config, _message(1)).finish()
    assert code == 75, log
    assert "claim for <bob@example.org> is still pending" in log and "action=defer" in log
    assert sink.messages == []
    assert _outcomes(db_url) == []  # not a decision: nothing in the audit
    holder.release_claim(REPLIES, holder.list_vacations()[0].id, BOB, HOLDER)
    holder.close()
    code, log = start(config, _message(1)).finish()  # the MTA's retry
    assert code == 0 and "action=reply" in log, log
    assert len(sink.messages) == 1


@pytest.mark.parametrize("message_key", ["<m1@example.org>", "<other@example.org>"])
def test_only_a_claim_older_than_the_stale_age_is_taken_over(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, start: HookFactory, message_key: str
) -> None:
    """A live delivery's claim is never taken over, however slow; one whose owner has certainly ended is."""
    deadline = 2.0
    config = make_config(limits=LIMITS_OFF, deliver={"deadline": f"{deadline:g}s"})
    _vacations(db_url, ALICE)
    stale_age = deadline + CLAIM_STALE_MARGIN
    # Past the deadline (the owner may still be sending), but younger than the stale age.
    holder = _hold_claim(db_url, message_key, age=stale_age - 5)
    code, log = start(config, _message(1)).finish()
    assert code == 75 and "still pending" in log, log
    assert sink.messages == []
    holder.release_claim(REPLIES, holder.list_vacations()[0].id, BOB, HOLDER)
    holder.close()
    _hold_claim(db_url, message_key, age=stale_age + 1).close()
    code, log = start(config, _message(1)).finish()
    assert code == 0 and "action=reply" in log, log
    assert len(sink.messages) == 1


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add_txt("example.org", f"v=spf1 ip4:{GOOD_IP} -all")
        # The key of the forger's signatures is never served: checking them takes the whole budget.
        server.silence("slow._domainkey.example.org")
        yield server


def test_a_forgery_being_verified_does_not_cost_the_real_sender_the_interval(
    make_config: ConfigFactory,
    db_url: str,
    sink: SmtpSink,
    dns_server: DNSServer,
    start: HookFactory,
) -> None:
    config = make_config(
        limits=LIMITS_OFF,
        verify={
            "require": "aligned",
            "dns_servers": [dns_server.address],
            "dns_timeout": "2s",
            "budget": "3s",
        },
    )
    _vacations(db_url, ALICE)
    signature = (
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=slow; c=relaxed/relaxed;\r\n"
        " h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n"
    )
    forged = start(config, _message(1, extra=signature), client=FORGED_IP)
    # The forgery holds the claim while its signature's key is looked up.
    deadline = time.monotonic() + 30
    while not dns_server.queried("slow._domainkey.example.org"):
        assert forged.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    genuine = start(config, _message(2), client=GOOD_IP)
    genuine.wait_for_line("waiting for another delivery's pending reply claim")
    code, log = forged.finish()
    assert code == 0 and "action=drop reason=unverified" in log, log
    code, log = genuine.finish()
    assert code == 0 and "action=reply" in log, log
    assert [str(m.message["In-Reply-To"]) for m in sink.messages] == ["<m2@example.org>"]
