"""Hook processes racing on one database: limits and intervals hold on SQLite, PostgreSQL and MariaDB.

Each test starts its processes (`python -m responder deliver`, as the MTA runs it) and lets them all
go at once by closing their standard input together; replies go to a real SMTP server.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import LIMITS_OFF, deliver_args, hook_env
from tests.sink import SmtpSink

# Many hook processes at once: slow, deselected in the quick loop with -m "not race".
pytestmark = pytest.mark.race

PROCESSES = 16
RCPTS = [f"rcpt{i}@example.com" for i in range(PROCESSES)]


@pytest.fixture
def db_url(backend_url: str) -> str:
    return backend_url


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str


def _message(sender: str, recipient: str, message_id: str) -> bytes:
    return (
        f"From: {sender}\nTo: {recipient}\nSubject: hello\nMessage-ID: <{message_id}>\n\nhello\n"
    ).encode()


def _race(config: Path, deliveries: list[tuple[str, str, str]]) -> list[Run]:
    """Deliver (sender, recipient, message id) triples in parallel processes started together."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(sender, rcpt)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=hook_env(),
        )
        for sender, rcpt, _id in deliveries
    ]
    runs = []
    try:
        # The hook reads its standard input to the end before anything else: all wait there.
        time.sleep(0.5)
        for proc, (sender, rcpt, message_id) in zip(procs, deliveries, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(_message(sender, rcpt, message_id))
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            assert proc.stderr is not None
            err = proc.stderr.read()
            runs.append(Run(proc.wait(timeout=120), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    return runs


def _vacations(db_url: str, *addresses: str, interval: int | None = None) -> None:
    store = Store.open(db_url)
    for address in addresses:
        store.put_vacation(
            address,
            dt.datetime.now(dt.UTC),
            None,
            enabled=True,
            message="away",
            timezone="UTC",
            interval_seconds=interval,
        )
    store.close()


def _outcomes(db_url: str) -> list[tuple[str, str]]:
    store = Store.open(db_url)
    try:
        return sorted((d.action, d.reason or "") for d in store.decisions(limit=1000))
    finally:
        store.close()


SPELLINGS = [
    "bob@example.org",
    "Bob+{i}@Example.org",
    "prvs=0{i:03d}abcdef=bob@example.org",
    "SRS0=h{i}=TT=example.org=bob@forwarder.example",
]


@pytest.mark.parametrize("limited", ["per_sender", "global"])
def test_sixteen_processes_send_exactly_the_limit(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink, limited: str
) -> None:
    config = make_config(limits={**LIMITS_OFF, limited: "5/1h"})
    _vacations(db_url, *RCPTS)
    senders = [SPELLINGS[i % len(SPELLINGS)].format(i=i) for i in range(PROCESSES)]
    if limited == "global":
        senders = [f"sender{i}@site{i}.example" for i in range(PROCESSES)]
    runs = _race(
        config, [(s, r, f"m{i}@example.org") for i, (s, r) in enumerate(zip(senders, RCPTS, strict=True))]
    )
    assert [r.returncode for r in runs] == [0] * PROCESSES, [r.stderr for r in runs if r.returncode]
    # Every hook has ended, and the sink records a message before it accepts it.
    assert len(sink.received()) == 5
    assert _outcomes(db_url) == sorted([("drop", "rate-limit")] * 11 + [("reply", "")] * 5)
    breaker = [line for r in runs for line in r.stderr.splitlines() if "circuit breaker" in line]
    assert len(breaker) == (1 if limited == "global" else 0), breaker


def test_processes_delivering_one_message_send_one_reply(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink
) -> None:
    config = make_config()
    _vacations(db_url, RCPTS[0])
    runs = _race(config, [("bob@example.org", RCPTS[0], "same@example.org")] * 12)
    assert [r.returncode for r in runs] == [0] * 12, [r.stderr for r in runs if r.returncode]
    assert len(sink.received()) == 1
    assert _outcomes(db_url) == sorted([("suppress", "interval")] * 11 + [("reply", "")])


def test_counts_expire_with_a_short_window(make_config: ConfigFactory, db_url: str, sink: SmtpSink) -> None:
    window = 5
    config = make_config(limits={**LIMITS_OFF, "per_sender": f"2/{window}s"})
    _vacations(db_url, *RCPTS)
    # Start right after a window boundary, so that the first three most likely share one window.
    time.sleep(window - time.time() % window + 0.05)
    runs = _race(config, [("bob@example.org", RCPTS[i], f"m{i}@example.org") for i in range(3)])
    assert [r.returncode for r in runs] == [0, 0, 0]
    time.sleep(window - time.time() % window + 0.05)
    [run] = _race(config, [("bob@example.org", RCPTS[3], "m3@example.org")])
    assert run.returncode == 0
    # Whatever the machine's speed: in each window of the decisions, the first two are answered.
    store = Store.open(db_url)
    decided = sorted(store.decisions(limit=100), key=lambda d: d.at)
    store.close()
    by_window: dict[int, list[str | None]] = {}
    for d in decided:
        by_window.setdefault(int(d.at.timestamp()) // window, []).append(d.reason)
    assert len(by_window) >= 2
    for reasons in by_window.values():
        assert reasons.count(None) == min(2, len(reasons))
        assert set(reasons) <= {None, "rate-limit"}
    assert decided[-1].reason is None  # the last one, alone in a later window
    answered = [d for d in decided if d.reason is None]
    assert len(answered) >= 3
    assert len(sink.wait_for(len(answered))) == len(answered)


def test_a_locked_counter_defers_with_75_and_the_retry_answers(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink
) -> None:
    config = make_config(database={"busy_timeout": 1}, limits={**LIMITS_OFF, "per_sender": "5/1h"})
    _vacations(db_url, *RCPTS[:2])
    [first] = _race(config, [("bob@example.org", RCPTS[0], "m0@example.org")])
    assert first.returncode == 0
    # Another host holds the counter row (or, on SQLite, the file) and does not let go.
    holder = create_engine(db_url, poolclass=NullPool)
    with holder.connect() as conn:
        if holder.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.execute(text("UPDATE rate_counters SET count = count"))
        [locked] = _race(config, [("bob@example.org", RCPTS[1], "m1@example.org")])
        conn.rollback()
    holder.dispose()
    assert locked.returncode == 75, locked.stderr
    assert "deferring" in locked.stderr
    [retry] = _race(config, [("bob@example.org", RCPTS[1], "m1@example.org")])
    assert retry.returncode == 0
    assert len(sink.wait_for(2)) == 2
