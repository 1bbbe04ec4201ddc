"""The hook ends by deliver.deadline + MARGIN: 75, or 0 once its decision is safe, whatever the database does.

Real servers behind a proxy that stops answering (tests/stallproxy.py), real table and row locks held by
the test, and the hook run as the MTA runs it. The reference for each case: the wall time of the process.
A suppression or a response already handed to the relay ends with 0 (the audit row or the claim's
confirmation is lost, with a warning); anything still owed ends with 75 (the MTA retries).
"""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from responder.hook.deadline import MARGIN
from responder.store.schema import reply_claims, vacations
from tests.backends import Databases
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample, vacation_set
from tests.sink import SmtpSink
from tests.stallproxy import StallingProxy

SENDER = "bob@example.org"
RCPT = "alice@example.com"
DEADLINE = 4.0
BUSY = 1.0
# Python's start before the hook's clock runs (imports, on a loaded 2-core machine).
STARTUP = 1.5
LIMIT = DEADLINE + MARGIN + STARTUP
SERVERS = [pytest.param(kind, marks=pytest.mark.backend) for kind in ("postgresql", "mysql")]

# What the hook sends when it takes a claim and writes the audit row (both servers).
CLAIM = b"UPDATE reply_claims SET replied_at"  # the claim's first statement
AUDIT = b"INSERT INTO decisions"


def _config(make_config: ConfigFactory, url: str) -> Path:
    return make_config(
        database={"url": url, "busy_timeout": f"{BUSY:g}s"}, deliver={"deadline": f"{DEADLINE:g}s"}
    )


def _hook(config: Path, message: str) -> tuple[subprocess.CompletedProcess[bytes], float]:
    started = time.monotonic()
    result = run_hook(config, *deliver_args(SENDER, RCPT, queue_id="QD"), stdin=sample(message), timeout=60)
    elapsed = time.monotonic() - started
    print(f"{message}: exit {result.returncode} after {elapsed:.2f}s (deadline {DEADLINE:g}s + {MARGIN:g}s)")
    return result, elapsed


def _via(url: str, proxy: StallingProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _upstream(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    assert parsed.host is not None and parsed.port is not None
    return parsed.host, parsed.port


def _decisions(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [row.reason for row in conn.exec_driver_sql("SELECT reason FROM decisions")]
    finally:
        engine.dispose()


@contextmanager
def _holding(url: str, *statements: str) -> Iterator[Connection]:
    """Run ``statements`` in an open transaction and keep it (and its locks) until the block ends."""
    engine = create_engine(url, poolclass=NullPool)
    conn = engine.connect()
    try:
        conn.begin()
        for statement in statements:
            conn.exec_driver_sql(statement)
        yield conn
    finally:
        conn.close()
        engine.dispose()


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, databases: Databases) -> str:
    """A migrated, empty database on the PostgreSQL or MariaDB server."""
    return databases.migrated(request.param)


@pytest.fixture
def vacation(server: str, make_config: ConfigFactory) -> str:
    """The server's URL, with a vacation for the recipient set directly (not through a proxy)."""
    vacation_set(_config(make_config, server), RCPT, "--message", "I am away.")
    return server


def test_server_that_never_answers_defers_a_message_that_needs_it(
    vacation: str, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    with StallingProxy(None) as proxy:
        result, elapsed = _hook(_config(make_config, _via(vacation, proxy)), "personal.eml")
    assert result.returncode == 75, result.stderr.decode()
    assert elapsed < LIMIT
    assert sink.messages == []
    # It still owes the reply: the MTA's retry, with the server back, sends it.
    retry, _ = _hook(_config(make_config, vacation), "personal.eml")
    assert retry.returncode == 0, retry.stderr.decode()
    assert len(sink.wait_for(1)) == 1


def test_server_that_never_answers_costs_a_suppressed_message_its_audit_row_only(
    server: str, make_config: ConfigFactory
) -> None:
    with StallingProxy(None) as proxy:
        result, elapsed = _hook(_config(make_config, _via(server, proxy)), "list-id.eml")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert elapsed < LIMIT
    assert "action=suppress reason=list-header" in stderr
    assert "audit not written" in stderr or "its claim confirmation or audit row is lost" in stderr
    assert _decisions(server) == []


def test_server_that_stops_answering_at_the_claim_defers(
    vacation: str, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    with StallingProxy(_upstream(vacation), stall_on=CLAIM) as proxy:
        result, elapsed = _hook(_config(make_config, _via(vacation, proxy)), "personal.eml")
        assert proxy.stalled.is_set()
    assert result.returncode == 75, result.stderr.decode()
    assert elapsed < LIMIT
    assert sink.messages == []
    retry, _ = _hook(_config(make_config, vacation), "personal.eml")
    assert retry.returncode == 0, retry.stderr.decode()
    assert len(sink.wait_for(1)) == 1


@pytest.mark.parametrize(("message", "replies"), [("list-id.eml", 0), ("personal.eml", 1)])
def test_server_that_stops_answering_at_the_audit_row_costs_only_the_row(
    vacation: str, make_config: ConfigFactory, sink: SmtpSink, message: str, replies: int
) -> None:
    """A suppression, or a reply the relay took: 75 would run the decided message again (or reply twice)."""
    with StallingProxy(_upstream(vacation), stall_on=AUDIT) as proxy:
        result, elapsed = _hook(_config(make_config, _via(vacation, proxy)), message)
        assert proxy.stalled.is_set()
    assert result.returncode == 0, result.stderr.decode()
    assert elapsed < LIMIT
    assert len(sink.messages) == replies
    assert _decisions(vacation) == []


def _lock_table(url: str, table: str) -> str:
    if url.startswith("postgresql"):
        return f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    return f"LOCK TABLES {table} WRITE"


def test_locked_audit_table_costs_a_suppressed_message_its_audit_row_only(
    server: str, make_config: ConfigFactory
) -> None:
    with _holding(server, _lock_table(server, "decisions")):
        result, elapsed = _hook(_config(make_config, server), "list-id.eml")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    # Bounded by busy_timeout, well before the deadline: no backstop needed.
    assert elapsed < DEADLINE + STARTUP
    assert "audit not written" in stderr and "still running" not in stderr
    assert _decisions(server) == []


def test_locked_claims_table_defers(vacation: str, make_config: ConfigFactory, sink: SmtpSink) -> None:
    with _holding(vacation, _lock_table(vacation, "reply_claims")):
        result, elapsed = _hook(_config(make_config, vacation), "personal.eml")
    assert result.returncode == 75, result.stderr.decode()
    assert elapsed < DEADLINE + STARTUP
    assert "still running" not in result.stderr.decode()
    assert sink.messages == []


def test_claim_row_locked_by_another_transaction_defers(
    vacation: str, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    engine = create_engine(vacation, poolclass=NullPool)
    with engine.begin() as conn:
        vacation_id = conn.execute(select(vacations.c.id)).scalar_one()
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        conn.execute(
            insert(reply_claims).values(
                vacation_id=vacation_id,
                sender_key=SENDER,
                replied_at=long_ago,
                message_key="an earlier message",
                state="sent",
                token="0" * 32,
            )
        )
    engine.dispose()
    lock = f"SELECT * FROM reply_claims WHERE sender_key = '{SENDER}' FOR UPDATE"
    with _holding(vacation, lock):
        result, elapsed = _hook(_config(make_config, vacation), "personal.eml")
    assert result.returncode == 75, result.stderr.decode()
    assert elapsed < DEADLINE + STARTUP
    assert sink.messages == []


def test_sqlite_lock_longer_than_the_deadline_meets_the_backstop(
    make_config: ConfigFactory, db_path: Path, sink: SmtpSink
) -> None:
    """sqlite3 waits for a lock inside C, where the soft deadline cannot reach it; the backstop can."""
    config = make_config(database={"busy_timeout": "60s"}, deliver={"deadline": "2s"})
    vacation_set(config, RCPT, "--message", "I am away.")
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        needs_reply = run_hook(config, *deliver_args(SENDER, RCPT), stdin=sample("personal.eml"), timeout=60)
        middle = time.monotonic()
        suppressed = run_hook(config, *deliver_args(SENDER, RCPT), stdin=sample("list-id.eml"), timeout=60)
        ended = time.monotonic()
    finally:
        holder.close()
    owed, suppressed_took = middle - started, ended - middle
    print(f"sqlite locked: reply owed {owed:.2f}s, suppressed {suppressed_took:.2f}s (2s + {MARGIN:g}s)")
    assert needs_reply.returncode == 75, needs_reply.stderr.decode()
    assert b"deferring (exit 75)" in needs_reply.stderr
    assert suppressed.returncode == 0, suppressed.stderr.decode()
    assert b"reason=list-header" in suppressed.stderr and b"audit row is lost" in suppressed.stderr
    for elapsed in (owed, suppressed_took):
        assert 2 + MARGIN - 0.5 < elapsed < 2 + MARGIN + STARTUP
    assert sink.messages == []


def test_service_that_never_answers_is_given_up_before_the_backstop(make_config: ConfigFactory) -> None:
    """The thin client waits for the service only as long as the hook may live, then defers itself."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        config = make_config(server={"socket": f"127.0.0.1:{port}"}, deliver={"deadline": "2s"})
        started = time.monotonic()
        result = run_hook(config, *deliver_args(SENDER, RCPT), stdin=sample("personal.eml"), timeout=60)
        elapsed = time.monotonic() - started
    print(f"silent service: exit {result.returncode} after {elapsed:.2f}s (2s + {MARGIN:g}s)")
    assert result.returncode == 75, result.stderr.decode()
    assert b"ERROR deferring" in result.stderr and b"still running" not in result.stderr
    assert elapsed < 2 + MARGIN + STARTUP
