"""The pipe hook's fast path: header rules decided and audited before anything heavy is imported."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.config import early
from responder.config.values import parse_duration
from responder.decide.rules import RULES
from responder.hook import fast as fastpath
from responder.hook.deliver import deliver_in_process
from responder.hook.envelope import hook_arguments
from responder.outcome import DECIDED, DEFER
from responder.store.database import DecisionRecord, Store
from responder.store.direct import record_direct
from tests.conftest import ConfigFactory
from tests.helpers import Case, deliver_args, hook_env, run_hook, sample
from tests.test_corpus import CASES

HEADER_REASONS = {rule.reason for rule in RULES[: [r.reason for r in RULES].index("no-vacation")]}
# What a header-suppressed message must not load: the heavy libraries, and what the fast path avoids.
HEAVY = (
    "sqlalchemy",
    "alembic",
    "jinja2",
    "dns",
    "spf",
    "dkim",
    "authres",
    "publicsuffixlist",
    "aiosmtplib",
    "asyncio",
    "email",
    "argparse",
    "responder.config.settings",
    "responder.store.database",
    "responder.decide.engine",
    "responder.mail.reply",
    "responder.smtp.transport",
    "responder.verify.sender",
)

# Runs the hook in a fresh interpreter and reports the exit status and every module it loaded.
PROBE = """
import io, sys
from responder.cli.main import main
status = main(sys.argv[1:], io.BytesIO(sys.stdin.buffer.read()))
loaded = sorted(sys.modules)
sys.stdout.write(repr((status, loaded)))
"""


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """The in-process runs configure the responder logger as the CLI does; give it back afterwards."""
    yield
    logger = logging.getLogger("responder")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _probe(config: Path, *args: str, stdin: bytes) -> tuple[int, set[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        env=hook_env(),
        timeout=60,
        check=True,
    )
    status, loaded = eval(result.stdout.decode())  # our own repr of (int, list[str])
    baseline = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stdout.write(repr(sorted(sys.modules)))"],
        capture_output=True,
        env=hook_env(),
        check=True,
    )
    started_with = set(eval(baseline.stdout.decode()))
    return status, set(loaded) - started_with, result.stderr.decode()


def _settled(outcome: object) -> bool:
    """Whether the fast path settled the message itself (else it hands it on, or leaves it)."""
    return outcome in (DECIDED, DEFER)


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("precedence-bulk.eml", "precedence"),
        # The rules that read past the header do it without the email package too.
        ("report-part-in-mixed.eml", "report"),
        ("bounce-text-with-returned-header.eml", "bounce-heuristic"),
    ],
)
def test_header_suppressed_message_loads_nothing_heavy_and_is_audited(
    name: str, reason: str, make_config: ConfigFactory, db_url: str
) -> None:
    config = make_config()
    args = deliver_args("bob@example.org", "alice@example.com", queue_id="Q7")
    status, loaded, stderr = _probe(config, *args, stdin=sample(name))
    assert status == 0
    assert _heavy(loaded) == set(), sorted(loaded)
    assert "responder.hook.fast" in loaded and "sqlite3" in loaded
    assert f"action=suppress reason={reason}" in stderr and "queue_id=Q7" in stderr
    store = Store.open(db_url)
    [row] = store.decisions()
    store.close()
    assert (row.action, row.reason, row.queue_id, row.sender) == ("suppress", reason, "Q7", "bob@example.org")


def test_a_message_the_header_rules_pass_takes_the_full_path(make_config: ConfigFactory, db_url: str) -> None:
    config = make_config()
    status, loaded, stderr = _probe(
        config, *deliver_args("bob@example.org", "alice@example.com"), stdin=sample("personal.eml")
    )
    assert status == 0
    assert {"sqlalchemy", "responder.decide.engine", "responder.config.settings"} <= loaded
    assert "reason=no-vacation" in stderr


def _rows(url: str) -> list[DecisionRecord]:
    store = Store.open(url)
    try:
        return store.decisions()
    finally:
        store.close()


def _same(row: DecisionRecord) -> tuple[object, ...]:
    return (row.queue_id, row.message_id, row.sender, row.recipient, row.action, row.reason, row.detail)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_path_decides_the_corpus_as_the_engine_does(
    case: Case, make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For every sample: the same audit row and log line, or no decision where the engine needs more."""
    fast_db = tmp_path / "fast.sqlite3"
    full_db = tmp_path / "full.sqlite3"
    for path in (fast_db, full_db):
        store = Store.open(f"sqlite:///{path}")
        store.upgrade()
        store.close()
    argv = deliver_args(
        case.sender, case.recipient, queue_id="Q1", original_recipient=case.original_recipient
    )
    raw = sample(case.sample)

    fast_config = make_config(database={"url": f"sqlite:///{fast_db}"})
    outcome = fastpath.deliver_fast(["--config", str(fast_config), *argv], raw)
    fast_log = capsys.readouterr().err

    full_config = make_config(database={"url": f"sqlite:///{full_db}"})
    assert deliver_in_process(["--config", str(full_config), *argv], raw) == 0
    full_log = capsys.readouterr().err
    [full] = _rows(f"sqlite:///{full_db}")

    if not _settled(outcome):
        assert full.reason not in HEADER_REASONS or full.reason == "auto-response-suppress", full
        assert _rows(f"sqlite:///{fast_db}") == []
        return
    assert outcome == DECIDED
    assert full.reason in HEADER_REASONS
    [fast] = _rows(f"sqlite:///{fast_db}")
    assert _same(fast) == _same(full)
    decision_line = next(line for line in full_log.splitlines() if "action=" in line)
    assert decision_line in fast_log.splitlines()


def test_oof_asks_whether_the_response_is_a_bounce_so_the_full_path_decides(
    make_config: ConfigFactory, db_url: str
) -> None:
    config = make_config()
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com")]
    assert not _settled(fastpath.deliver_fast(argv, sample("x-auto-response-suppress-oof.eml")))
    assert fastpath.deliver_fast(argv, sample("x-auto-response-suppress-all.eml")) == DECIDED


@pytest.mark.parametrize(
    "argv",
    [
        ["deliver", "--sender", "a@example.org"],  # no recipient (and no $RECIPIENT)
        ["deliver", "--sender", "a@example.org", "--recipient", "b@example.com", "--bogus", "x"],
        ["deliver", "--send", "a@example.org", "--recipient", "b@example.com"],  # argparse's abbreviation
        ["deliver", "--sender", "-x", "--recipient", "b@example.com"],
        ["deliver", "--sender", "a@example.org", "--recipient"],
        ["deliver", "--help"],
    ],
)
def test_anything_unusual_on_the_command_line_is_left_to_argparse(
    argv: list[str], make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECIPIENT", raising=False)
    config = make_config()
    assert not _settled(fastpath.deliver_fast(["--config", str(config), *argv], sample("list-id.eml")))


def test_command_line_forms() -> None:
    assert hook_arguments(
        ["--config=/c.toml", "deliver", "--sender=", "--recipient", "r@x", "--queue-id", "Q"]
    ) == {"config": "/c.toml", "sender": "", "recipient": "r@x", "queue_id": "Q"}


def test_a_broken_value_of_a_key_it_reads_goes_to_the_full_path_which_defers(
    make_config: ConfigFactory,
) -> None:
    config = make_config(deliver={"max_received": "many"})
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com")]
    assert not _settled(fastpath.deliver_fast(argv, sample("precedence-bulk.eml")))
    assert deliver_in_process(argv, sample("precedence-bulk.eml")) == 75


@pytest.mark.parametrize(
    "text",
    ["10", "10s", " 1.5 m ", "2h", "7d", "1w", "0", "1.", ".5", "1e3", "-1", "5x", "", "\u0661\u0662s", "s"],
)
def test_durations_as_the_configuration_reads_them(text: str) -> None:
    try:
        expected: float | None = parse_duration(text)
    except ValueError:
        expected = None
    try:
        got: float | None = early.parse_duration(text)
    except Exception:
        got = None
    assert got == expected


def test_audit_failure_is_logged_and_the_message_still_accepted(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(database={"url": f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"})
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com")]
    assert fastpath.deliver_fast(argv, sample("list-id.eml")) == DECIDED
    err = capsys.readouterr().err
    assert "reason=list-header" in err and "WARNING audit not written" in err
    # The file must not have been created by the attempt.
    assert not (tmp_path / "missing").exists()


def test_direct_audit_writes_rows_the_store_reads(db_url: str) -> None:
    """The row sqlite3 writes is the one the store writes and reads."""
    import datetime as dt

    record = DecisionRecord(
        at=dt.datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=dt.UTC),
        queue_id="Q9",
        message_id="<m@x>",
        sender="bob@example.org",
        recipient="\u00e4lice@example.com",
        action="suppress",
        reason="list-header",
        detail="List-Id \U0001f600",
    )
    assert record_direct(db_url, 5.0, vars(record)) is None
    [stored] = _rows(db_url)
    assert stored == record


def test_database_servers_take_the_full_path_with_its_timeouts(
    backend_url: str, make_config: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL and MariaDB: a header-suppressed message is decided and audited by the engine."""
    config = make_config(database={"url": backend_url})
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com", queue_id="QS")]
    outcome = fastpath.deliver_fast(argv, sample("list-id.eml"))
    if backend_url.startswith("sqlite"):
        assert outcome == DECIDED
        assert "reason=list-header" in capsys.readouterr().err
    else:
        assert not _settled(outcome)
        assert capsys.readouterr().err == ""
        assert deliver_in_process(argv, sample("list-id.eml")) == 0
    assert [(r.reason, r.queue_id) for r in _rows(backend_url)] == [("list-header", "QS")]


def test_unsupported_urls_are_left_to_the_full_path(make_config: ConfigFactory) -> None:
    config = make_config(database={"url": "sqlite://"})
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com")]
    assert not _settled(fastpath.deliver_fast(argv, sample("list-id.eml")))


def test_hook_through_the_fast_path_end_to_end(make_config: ConfigFactory, db_url: str) -> None:
    """As Postfix runs it: python -m responder deliver, exit 0, one line, one row."""
    config = make_config()
    result = run_hook(
        config, *deliver_args("", "alice@example.com", queue_id="QN"), stdin=sample("personal.eml")
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().count("reason=null-sender") == 1
    assert [(r.reason, r.queue_id) for r in _rows(db_url)] == [("null-sender", "QN")]


def test_rules_of_the_header_phase_read_only_the_header_view() -> None:
    """The walker hands a HEADERS rule a HeaderView; mypy holds the rule to it through this annotation."""
    import typing

    from responder.decide import rules
    from responder.decide.context import HeaderView

    header_rules = [rule for rule in RULES if rule.phase == rules.HEADERS]
    assert {rule.reason for rule in header_rules} == HEADER_REASONS
    for rule in header_rules:
        assert typing.get_type_hints(rule.check, vars(rules))["ctx"] is HeaderView, rule.reason
    # The phases follow one another in the table: the hook's header phase is a prefix of it.
    order = [rules.PHASES.index(rule.phase) for rule in RULES]
    assert order == sorted(order)


def test_a_header_view_asked_past_its_phase_sends_the_message_down_the_full_path() -> None:
    from responder.decide import rules
    from responder.decide.context import HeaderFacts, NeedsFullPath
    from responder.mail.message import Envelope, Inbound

    raw = b"From: bob@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
    view = HeaderFacts(Inbound(Envelope("bob@example.org", "alice@example.com"), raw), 50)
    assert rules.first_firing(view, rules.HEADER_PHASE) is None
    with pytest.raises(NeedsFullPath):
        rules.first_firing(view)


def test_the_full_path_goes_on_from_the_header_phase_on_its_inbound_and_file(
    make_config: ConfigFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the header path learnt is handed on: the parsed file and, the phase done, its Inbound."""
    config = make_config()
    argv = ["--config", str(config), *deliver_args("bob@example.org", "alice@example.com")]
    handoff = fastpath.deliver_fast(argv, sample("personal.eml"))
    assert isinstance(handoff, fastpath.Handoff) and handoff.inbound is not None
    # The file is not read again, and the header phase is not walked again: a bulk message in the
    # Inbound handed on is past the rule that would suppress it.
    config.unlink()
    handoff.inbound = type(handoff.inbound)(handoff.inbound.envelope, sample("precedence-bulk.eml"))
    assert deliver_in_process(argv, b"", handoff=handoff) == 0
    assert "reason=no-vacation" in capsys.readouterr().err
    assert [row.reason for row in _rows(db_url)] == ["no-vacation"]


def test_without_a_readable_file_the_full_path_reports_it_and_defers(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(tmp_path / "missing.toml"), *deliver_args("bob@example.org", "alice@example.com")]
    handoff = fastpath.deliver_fast(argv, sample("personal.eml"))
    assert isinstance(handoff, fastpath.Handoff) and handoff.document is None
    assert deliver_in_process(argv, sample("personal.eml"), handoff=handoff) == 75
    assert "missing.toml does not exist; deferring" in capsys.readouterr().err
