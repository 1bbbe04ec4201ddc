"""The service's metrics and health: Prometheus's own checker, counters against the audit trail, /healthz."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from responder.observe.health import Report, judge
from responder.observe.metrics import verification_results
from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import MESSAGES, vacation_set
from tests.lmtp_support import LmtpClient, ServiceProcess
from tests.metrics_support import get, metrics_address, promtool_check, require_promtool, samples
from tests.sink import SmtpSink

ALICE = "alice@example.com"
CAROL = "carol@example.com"

ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lmtp.sock"


@pytest.fixture
def start_service(make_config: ConfigFactory, socket_path: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(**sections: dict[str, object]) -> ServiceProcess:
        server = {
            "socket": f"unix:{socket_path}",
            "metrics_listen": "127.0.0.1:0",
            **sections.pop("server", {}),
        }
        config = make_config(server=server, **sections)
        service = ServiceProcess(config, socket_path, tmp_path / f"service-{len(started)}.log").start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def _corpus() -> list[Path]:
    return sorted(p for p in MESSAGES.rglob("*") if p.is_file() and p.suffix in (".eml", ".bin"))


def _audit(db_url: str) -> list[tuple[str, str | None, str]]:
    store = Store.open(db_url)
    try:
        return [(row.action, row.reason, row.detail) for row in store.decisions(limit=100_000)]
    finally:
        store.close()


def _counter(text: str, name: str, *labels: str) -> Counter[tuple[str, ...]]:
    found: Counter[tuple[str, ...]] = Counter()
    for sample in samples(text):
        if sample.name == name and sample.value:
            found[tuple(sample.labels[label] for label in labels)] += int(sample.value)
    return found


def _value(text: str, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items())


def test_a_corpus_counted_as_audited_and_the_exposition_passes_promtool(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    require_promtool()  # before the work, not after it
    service = start_service()
    url = metrics_address(service)
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    corpus = _corpus()
    for number, path in enumerate(corpus):
        # Two senders per sample: the second reply to one sender is suppressed by the interval.
        sender = "" if number % 11 == 0 else f"sender{number % 7}@example.org"
        replies = client.send_message(sender, [ALICE, CAROL], path.read_bytes())
        assert [code for code, _ in replies] == [250, 250], (path.name, replies)
    client.close()

    status, text = get(f"{url}/metrics")
    assert status == 200
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    audit = _audit(db_url)
    assert len(audit) == 2 * len(corpus)
    expected = Counter((action, reason or "none") for action, reason, _ in audit)
    assert _counter(text, "responder_decisions_total", "action", "reason") == expected
    replies_sent = sum(1 for action, _, _ in audit if action == "reply")
    assert replies_sent > 1 and len(sink.received()) == replies_sent
    assert _value(text, "responder_responses_sent_total", kind="reply") == replies_sent
    assert _value(text, "responder_decision_duration_seconds_count") == len(audit)
    assert _value(text, "responder_relay_failures_total") == 0
    assert _value(text, "responder_dependency_healthy", dependency="database") == 1
    assert get(f"{url}/healthz")[0] == 200


def test_verification_results_by_method_match_the_audit(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, db_url: str
) -> None:
    require_promtool()
    service = start_service(
        verify={
            "require": "aligned",
            "trusted_authserv_ids": ["mx.example.com"],
            "dns_servers": ["127.0.0.1"],
        }
    )
    url = metrics_address(service)
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    for number, result in enumerate(["pass", "fail", "pass", "softfail"]):
        sender = f"erin{number}@partner.example"
        message = (
            f"Authentication-Results: mx.example.com; spf={result} smtp.mailfrom={sender}\r\n"
            f"From: {sender}\r\nTo: {ALICE}\r\nSubject: hello {number}\r\n"
            f"Message-ID: <{number}@partner.example>\r\n\r\nHello.\r\n"
        ).encode()
        assert client.send_message(sender, [ALICE], message)[0][0] == 250
    client.close()
    text = get(f"{url}/metrics")[1]
    expected: Counter[tuple[str, ...]] = Counter()
    for _action, _reason, detail in _audit(db_url):
        expected.update(verification_results(detail))
    assert expected[("authres", "pass")] == 2 and expected[("authres", "fail")] == 2
    assert _counter(text, "responder_sender_verifications_total", "method", "result") == expected
    assert promtool_check(text).returncode == 0


def _message(number: int) -> bytes:
    return (
        f"From: Bob <bob@example.org>\r\nTo: {ALICE}\r\nSubject: question {number}\r\n"
        f"Message-ID: <{number}.bob@example.org>\r\n\r\nHello.\r\n"
    ).encode()


def _wait_status(url: str, status: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got, body = get(url)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.1)


def test_healthz_fails_while_the_relay_is_down_past_the_threshold_and_recovers(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink
) -> None:
    service = start_service(
        server={"health_threshold": "1s"}, outbox={"backoff_min": "0.5s", "backoff_max": "0.5s"}
    )
    url = metrics_address(service)
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    sink.data_reply = "451 4.3.0 try again later"
    # The response is committed to the outbox: the MTA is not asked to retry, the outbox is.
    assert client.send_message("bob@example.org", [ALICE], _message(1))[0][0] == 250
    client.close()
    body = _wait_status(f"{url}/healthz", 503)
    assert "relay unusable" in body and "database ok" in body
    text = get(f"{url}/metrics")[1]
    assert _value(text, "responder_relay_failures_total", kind="deferred") >= 1
    assert _value(text, "responder_dependency_healthy", dependency="relay") == 0
    assert _value(text, "responder_outbox_depth") == 1

    sink.data_reply = ""
    assert "relay ok" in _wait_status(f"{url}/healthz", 200)
    assert len(sink.received()) == 1
    text = get(f"{url}/metrics")[1]
    assert _value(text, "responder_outbox_depth") == 0


def test_an_unreachable_relay_counts_as_unreachable(start_service: ServiceFactory, socket_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    service = start_service(smtp={"port": closed_port})
    url = metrics_address(service)
    vacation_set(service.config, ALICE, "--message", "Away.")
    client = LmtpClient(socket_path)
    client.greet()
    assert client.send_message("bob@example.org", [ALICE], _message(1))[0][0] == 250
    client.close()
    deadline = time.monotonic() + 60
    while _value(get(f"{url}/metrics")[1], "responder_relay_failures_total", kind="unreachable") < 1:
        assert time.monotonic() < deadline, "the outbox sender never tried the relay"
        time.sleep(0.1)


def test_healthz_fails_while_the_database_is_unusable_and_recovers(
    make_config: ConfigFactory, socket_path: Path, sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    server = {"socket": f"unix:{socket_path}", "metrics_listen": "127.0.0.1:0", "health_threshold": "1s"}
    config = make_config(server=server, database={"busy_timeout": "0.2s"})
    vacation_set(config, ALICE, "--message", "Away.")
    # Another process holds the file exclusively from before the start: the service can neither read
    # nor write it.
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log")
    try:
        service.start()
        url = metrics_address(service)
        client = LmtpClient(socket_path)
        client.greet()
        assert client.send_message("bob@example.org", [ALICE], _message(1))[0][0] == 451
        body = _wait_status(f"{url}/healthz", 503)
        assert "database unusable" in body
        text = get(f"{url}/metrics")[1]
        assert _value(text, "responder_database_faults_total", kind="unavailable") >= 1
        assert _value(text, "responder_dependency_healthy", dependency="database") == 0
        holder.rollback()
        holder.execute("PRAGMA locking_mode=NORMAL")
        holder.execute("SELECT count(*) FROM decisions").fetchall()  # gives the exclusive lock up
        holder.close()
        assert client.send_message("bob@example.org", [ALICE], _message(2))[0][0] == 250
        client.close()
        assert "database ok" in _wait_status(f"{url}/healthz", 200)
        assert len(sink.wait_for(1)) == 1
    finally:
        holder.close()
        service.stop()


def test_the_metrics_endpoint_is_off_by_default(
    make_config: ConfigFactory, socket_path: Path, tmp_path: Path
) -> None:
    config = make_config(server={"socket": f"unix:{socket_path}"})
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        assert "metrics and health on" not in service.log()
    finally:
        service.stop()


def test_health_judges_every_process_report() -> None:
    threshold = 10.0
    # Failing for 11 s in one process, nobody has succeeded since: unhealthy.
    assert not judge([Report(100.0, 111.0, 100.0)], now=111.0, threshold=threshold).healthy
    # Failing for 5 s only.
    assert judge([Report(100.0, 105.0, 100.0)], now=105.0, threshold=threshold).healthy
    # Another process succeeded after this one's last failure: healthy.
    assert judge([Report(0.0, 105.0, 90.0), Report(106.0, 0.0, 0.0)], now=200.0, threshold=threshold).healthy
    # Another process succeeded since the failures began, but they go on: counted from that success.
    verdict = judge([Report(0.0, 130.0, 90.0), Report(115.0, 0.0, 0.0)], now=130.0, threshold=threshold)
    assert (verdict.healthy, verdict.failing_for) == (False, 15.0)
    assert judge([], now=1.0, threshold=threshold).healthy


# Runs the promtool test as on a machine without Prometheus's tools.
_WITHOUT_PROMTOOL = """
import sys
import pytest
import tests.metrics_support as support
support.PROMTOOL = "/nonexistent/promtool"
sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "-rsf", *sys.argv[1:]]))
"""


@pytest.mark.parametrize("require", [False, True], ids=["skips", "required-fails"])
def test_without_promtool_the_check_skips_with_the_reason_unless_required(require: bool) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    # The inner run selects its own tests: the outer one's options (markers, basetemp) stay out.
    env = {k: v for k, v in os.environ.items() if k not in ("RESPONDER_TEST_INTEGRATION", "PYTEST_ADDOPTS")}
    if require:
        env["RESPONDER_TEST_INTEGRATION"] = "require"
    test = "tests/test_metrics.py::test_a_corpus_counted_as_audited_and_the_exposition_passes_promtool"
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PROMTOOL, test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert "promtool is not installed" in result.stdout
    if require:
        assert result.returncode == 1 and "failed" in summary, result.stdout
    else:
        assert result.returncode == 0 and "skipped" in summary and "passed" not in summary, result.stdout


def test_the_outbox_source_is_asked_at_scrape_time(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from responder.observe.metrics import OutboxState, scrape_registry, set_outbox_source

    asked: list[int] = []

    def source() -> OutboxState:
        asked.append(1)
        return OutboxState(depth=3, oldest_age=12.5)

    registry = scrape_registry(60.0, directory=str(tmp_path))
    assert b"responder_outbox_depth" not in generate_latest(registry)
    set_outbox_source(source)
    try:
        text = generate_latest(registry).decode()
    finally:
        set_outbox_source(None)
    assert len(asked) == 1
    assert _value(text, "responder_outbox_depth") == 3
    assert _value(text, "responder_outbox_oldest_age_seconds") == 12.5
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_metrics_address_in_use_stops_the_start_with_the_reason(
    make_config: ConfigFactory, socket_path: Path
) -> None:
    import subprocess
    import sys

    from tests.helpers import hook_env

    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        config = make_config(server={"socket": f"unix:{socket_path}", "metrics_listen": f"127.0.0.1:{port}"})
        result = subprocess.run(
            [sys.executable, "-m", "responder", "--config", str(config), "serve"],
            capture_output=True,
            env=hook_env(),
            timeout=60,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr.decode()
    assert not socket_path.exists()
