"""A real Postfix, a pipe time limit just above deliver.deadline + margin, a database that stops answering.

PostgreSQL or MariaDB sit behind tests/stallproxy.py. Whatever the database does, the hook must end
before Postfix's ``responder_time_limit`` (the pipe's ``transport_time_limit``): a message that still
owes a reply is deferred (75) and answered once the database is back; a suppressed one is delivered
(0). Postfix never logs ``Command time limit exceeded`` and never bounces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from responder.hook.deadline import MARGIN
from tests.backends import Databases
from tests.sink import SmtpSink
from tests.stallproxy import StallingProxy

from .common import run
from .hook import ResponderInstance
from .mail import assert_reply, bounces, message, new_sender
from .postfix import POSTFIX, PrivatePostfix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.backend,
    pytest.mark.skipif(not POSTFIX.exists(), reason=f"{POSTFIX} is absent (run .ci/install-mail-servers)"),
]

ALICE = "alice@example.test"
AUTOREPLY = "alice@autoreply.example.test"
DEADLINE = 4.0
BUSY = 1.0
# Python's start before the hook's clock runs, on a loaded machine.
STARTUP = 2.0
# Postfix kills the hook here and bounces the message; a stalled database used to hold it that long.
TIME_LIMIT = int(DEADLINE + MARGIN + STARTUP + 1)
TIME_LIMIT_EXCEEDED = "Command time limit exceeded"


class LimitedPostfix(PrivatePostfix):
    """The documented setup with the pipe's time limit lowered to just above deadline + margin."""

    def write_config(self) -> None:
        super().write_config()
        with (self.etc / "main.cf").open("a") as main_cf:
            main_cf.write(f"responder_time_limit = {TIME_LIMIT}s\n")


def _write_config(responder: ResponderInstance, url: str, smtp_port: int) -> None:
    responder.config.write_text(
        f'[database]\nurl = "{url}"\nbusy_timeout = "{BUSY:g}s"\n'
        f'\n[deliver]\ndeadline = "{DEADLINE:g}s"\n'
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\ntimeout = "10s"\n'
        'hostname = "responder.example.test"\n'
        '\n[verify]\nrequire = "off"\n'
    )
    responder.config.chmod(0o644)


@pytest.fixture(scope="module")
def drivers(responder_executable: Path) -> None:
    """The database drivers in the hook's venv (the package's ``postgresql`` and ``mysql`` extras)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    pip = responder_executable.parent / "pip"
    run([pip, "install", "--quiet", "psycopg[binary]>=3.1", "PyMySQL>=1.1"], env=env, timeout=600)


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def database(request: pytest.FixtureRequest, databases: Databases) -> str:
    return databases.migrated(request.param)


@pytest.fixture(scope="module")
def postfix(
    drivers: None, database: str, responder: ResponderInstance, sink: SmtpSink
) -> Iterator[LimitedPostfix]:
    instance = LimitedPostfix(relay_port=sink.port, executable=responder.executable, config=responder.config)
    try:
        _write_config(responder, database, instance.port)
        responder.set_vacation(ALICE)
        instance.start()
        yield instance
    finally:
        instance.stop()


def _upstream(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    assert parsed.host is not None and parsed.port is not None
    return parsed.host, parsed.port


def _through(database: str, proxy: StallingProxy) -> str:
    return make_url(database).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _hook_times(postfix: PrivatePostfix, queue_id: str, status: str) -> list[float]:
    """How long each run of the hook took with that result: the last of Postfix's ``delays=a/b/c/d``."""
    line = re.compile(
        rf"{queue_id}: to=<{re.escape(AUTOREPLY)}>.* delays=[\d.]+/[\d.]+/[\d.]+/([\d.]+),.* status={status} "
    )
    return [float(m[1]) for m in map(line.search, postfix.maillog().splitlines()) if m]


def _assert_never_bounced(postfix: PrivatePostfix, sink: SmtpSink) -> None:
    assert TIME_LIMIT_EXCEEDED not in postfix.maillog()
    assert [d for d in postfix.deliveries() if d.status == "bounced"] == []
    assert bounces(sink) == []


def test_a_suppressed_message_is_delivered_though_its_audit_row_never_reaches_the_database(
    postfix: LimitedPostfix, database: str, responder: ResponderInstance, sink: SmtpSink
) -> None:
    sink.clear()
    sender = f"announce-{new_sender()}"
    with StallingProxy(_upstream(database), stall_on=b"INSERT INTO decisions") as proxy:
        _write_config(responder, _through(database, proxy), postfix.port)
        data = message(sender, headers={"List-Id": "Announcements <announce.lists.remote.test>"})
        queue_id = postfix.send(sender, [ALICE], data)
        postfix.wait_for_delivery(queue_id, AUTOREPLY, "sent", timeout=TIME_LIMIT + 20)
        assert proxy.stalled.is_set()
    postfix.wait_for_empty_queue()
    [took] = _hook_times(postfix, queue_id, "sent")
    print(f"suppressed, audit stalled: hook ran {took:.1f}s (deadline {DEADLINE:g}s + {MARGIN:g}s)")
    assert took < DEADLINE + MARGIN + STARTUP < TIME_LIMIT
    assert sink.messages == []
    _assert_never_bounced(postfix, sink)


def test_a_message_owing_a_reply_is_deferred_until_the_database_answers(
    postfix: LimitedPostfix, database: str, responder: ResponderInstance, sink: SmtpSink
) -> None:
    sink.clear()
    sender = new_sender()
    with StallingProxy(None) as proxy:
        _write_config(responder, _through(database, proxy), postfix.port)
        queue_id = postfix.send(sender, [ALICE], message(sender))
        postfix.wait_for_delivery(queue_id, AUTOREPLY, "deferred", timeout=TIME_LIMIT + 20)
        postfix.wait_for_delivery(queue_id, ALICE, "sent")
        postfix.wait_until_deferred(queue_id, timeout=TIME_LIMIT + 20)
    times = _hook_times(postfix, queue_id, "deferred")
    print(f"reply owed, database silent: hook ran {times} s (deadline {DEADLINE:g}s + {MARGIN:g}s)")
    assert times and max(times) < DEADLINE + MARGIN + STARTUP < TIME_LIMIT
    assert sink.messages == []
    _assert_never_bounced(postfix, sink)

    _write_config(responder, database, postfix.port)
    postfix.flush()
    postfix.wait_for_delivery(queue_id, AUTOREPLY, "sent", timeout=60)
    postfix.wait_for_empty_queue()
    [reply] = sink.wait_for(1)
    assert_reply(reply, sender=sender, responder_address=ALICE)
    _assert_never_bounced(postfix, sink)
