"""Administrator commands as a new user types them: vacations, schedules in time zones, the audit log."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import pty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from responder.cli.main import main
from responder.store.database import DecisionRecord, Store
from responder.store.schema import SCHEMA_REVISION
from tests.conftest import ConfigFactory
from tests.helpers import MESSAGES, deliver_args, run_admin, run_hook, sample
from tests.sink import SmtpSink

ALICE = "alice@example.com"


def _ok(config: Path, *args: str) -> str:
    result = run_admin(config, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _fails(config: Path, *args: str) -> str:
    result = run_admin(config, *args)
    assert result.returncode == 1, result.stdout.decode()
    return result.stderr.decode()


def test_admin_exit_statuses_through_the_interpreter(make_config: ConfigFactory) -> None:
    """The other tests call ``cli.main`` in-process; here the statuses a shell sees: 0, 1 and 2."""
    config = make_config()
    done = run_hook(config, "vacation", "set", ALICE, "--message", "away")
    assert (done.returncode, done.stdout) == (0, f"{ALICE}: active\n".encode()), done.stderr.decode()
    failed = run_hook(config, "vacation", "show", "carol@example.com")
    assert failed.returncode == 1 and b"no vacation for carol@example.com" in failed.stderr
    usage = run_hook(config, "vacation")
    assert usage.returncode == 2 and usage.stderr.startswith(b"usage: responder vacation")


def test_set_show_list_off_delete(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    message_file = tmp_path / "away.txt"
    message_file.write_text("Je suis absente. ✈\n", encoding="utf-8")
    out = _ok(
        config, "vacation", "set", "Alice@Example.COM", "--message-file", str(message_file),
        "--subject", "Absente", "--from", "Alice Exemple <alice@example.com>",
        "--start", "2026-11-01", "--end", "2027-01-04T09:00", "--timezone", "Europe/Paris",
        "--interval", "3d", "--alias", "a.exemple@example.com", "--alias", "alice@example.net",
    )  # fmt: skip
    assert out.strip() == "alice@example.com: active"
    shown = json.loads(_ok(config, "vacation", "show", "alice@example.com", "--json"))
    assert shown == {
        "address": "alice@example.com",
        "status": "active",
        "enabled": True,
        "start": "2026-11-01T00:00+01:00",
        "end": "2027-01-04T09:00+01:00",
        "timezone": "Europe/Paris",
        "interval": "3d",
        "interval_set": "3d",
        "subject": "Absente",
        "from": "Alice Exemple <alice@example.com>",
        "template": None,
        "aliases": ["a.exemple@example.com", "alice@example.net"],
        "message": "Je suis absente. ✈\n",
        "html_message": None,
        "external_subject": None,
        "external_message": None,
        "external_html_message": None,
        "external_audience": "all",
        "default_language": None,
        "translations": [],
        "updated": shown["updated"],
    }
    # An update changes only what it names.
    _ok(config, "vacation", "set", "alice@example.com", "--end", "2027-01-05T09:00")
    shown = json.loads(_ok(config, "vacation", "show", "alice@example.com", "--json"))
    assert (shown["end"], shown["subject"], shown["interval"]) == ("2027-01-05T09:00+01:00", "Absente", "3d")
    assert "alice@example.com" in _ok(config, "vacation", "list")
    assert json.loads(_ok(config, "vacation", "list", "--json"))[0]["address"] == "alice@example.com"
    _ok(config, "vacation", "off", "alice@example.com")
    assert json.loads(_ok(config, "vacation", "show", "alice@example.com", "--json"))["status"] == "off"
    _ok(config, "vacation", "delete", "alice@example.com")
    assert "no vacation for alice@example.com" in _fails(config, "vacation", "show", "alice@example.com")


def test_dst_schedule_is_stored_in_utc(make_config: ConfigFactory) -> None:
    config = make_config()
    _ok(
        config, "vacation", "set", "bob@example.com", "--message", "away",
        "--start", "2026-03-29T01:30", "--end", "2026-03-29T03:30", "--timezone", "Europe/Berlin",
    )  # fmt: skip
    shown = json.loads(_ok(config, "vacation", "show", "bob@example.com", "--json"))
    # 01:30 is still winter time (+01:00), 03:30 already summer time (+02:00): one hour apart in UTC.
    assert (shown["start"], shown["end"]) == ("2026-03-29T01:30+01:00", "2026-03-29T03:30+02:00")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["not-an-address", "--message", "x"], "not an email address"),
        (["a@example.com"], "needs --message"),
        (["a@example.com", "--message", "x", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["a@example.com", "--message", "x", "--start", "next tuesday"], "not an ISO 8601"),
        (
            ["a@example.com", "--message", "x", "--start", "2026-12-02", "--end", "2026-12-01"],
            "after --start",
        ),
        (["a@example.com", "--message", "x", "--interval", "soon"], "not a duration"),
        (["a@example.com", "--message", "x", "--from", "nobody"], "--from needs one address"),
        (["a@example.com", "--message", "x", "--template", "missing.txt.j2"], "missing.txt.j2"),
    ],
)
def test_bad_vacation_input_is_refused(make_config: ConfigFactory, args: list[str], complaint: str) -> None:
    config = make_config()
    assert complaint in _fails(config, "vacation", "set", *args)
    assert _ok(config, "vacation", "list") == "no vacations\n"


def test_log_filters_and_json(make_config: ConfigFactory) -> None:
    config = make_config()
    _ok(config, "vacation", "set", "alice@example.com", "--message", "away")
    for sender in ("bob@example.org", "carol@example.org", ""):
        result = run_hook(config, *deliver_args(sender, "alice@example.com"), stdin=sample("personal.eml"))
        assert result.returncode == 0
    entries = json.loads(_ok(config, "log", "--json"))
    assert [(e["action"], e["reason"]) for e in entries] == [
        ("suppress", "null-sender"),
        ("reply", None),
        ("reply", None),
    ]
    only = json.loads(_ok(config, "log", "--json", "--sender", "CAROL@example.org"))
    assert [e["sender"] for e in only] == ["carol@example.org"]
    assert len(json.loads(_ok(config, "log", "--json", "--limit", "1"))) == 1


def test_explain_prints_the_reply_and_writes_nothing(make_config: ConfigFactory) -> None:
    config = make_config()
    _ok(config, "vacation", "set", "alice@example.com", "--message", "away")
    args = ["explain", "--sender", "bob@example.org", "--recipient", "alice@example.com"]
    result = run_hook(config, *args, "--json", stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    assert (out["action"], out["reason"], out["rcpt_to"]) == ("reply", None, "bob@example.org")
    assert "Auto-Submitted: auto-replied" in out["message"]
    text = run_hook(config, *args, stdin=sample("list-id.eml")).stdout.decode()
    assert text.splitlines()[:2] == ["action: suppress", "reason: list-header"]
    assert json.loads(_ok(config, "log", "--json")) == []


def test_db_current_and_upgrade(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(database={"url": f"sqlite:///{tmp_path}/fresh.sqlite3"})
    assert _ok(config, "db", "current").startswith("none (this responder needs ")
    assert "does not exist: run `responder db upgrade`" in _fails(config, "vacation", "list")
    assert _ok(config, "db", "upgrade").strip().endswith(f"to {SCHEMA_REVISION}")
    assert _ok(config, "db", "current").strip() == f"{SCHEMA_REVISION} (current)"


# -- what a new user meets first -------------------------------------------------------------------


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``responder ARGS`` run through cli.main in this process: (status, stdout, stderr)."""

    def run(*args: str, stdin: BinaryIO | None = None) -> tuple[int, str, str]:
        code = main(list(args), stdin=stdin)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    logger = logging.getLogger("responder")  # explain points it at the captured stream
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


Run = Callable[..., tuple[int, str, str]]


def test_db_upgrade_says_what_it_did(make_config: ConfigFactory, tmp_path: Path, in_process: Run) -> None:
    config = str(make_config(database={"url": f"sqlite:///{tmp_path}/new.sqlite3"}))
    assert in_process("--config", config, "db", "upgrade") == (
        0,
        f"database schema upgraded from empty to {SCHEMA_REVISION}\n",
        "",
    )
    assert in_process("--config", config, "db", "upgrade")[1] == (
        f"database schema {SCHEMA_REVISION} is current: nothing to do\n"
    )
    assert in_process("--config", config, "db", "current")[1] == f"{SCHEMA_REVISION} (current)\n"


@pytest.mark.parametrize(
    ("args", "usage", "listed"),
    [
        ([], "usage: responder [-h]", ["deliver", "vacation", "bounce", "log"]),
        (["vacation"], "usage: responder vacation [-h] COMMAND", ["set", "show", "list", "off", "delete"]),
        (["db"], "usage: responder db [-h] COMMAND", ["upgrade", "current"]),
        (["vacation", "show"], "usage: responder vacation show [-h] [--json] address", []),
        (["log", "--limit", "-1"], "usage: responder log", []),
    ],
)
def test_usage_errors_show_the_usage(args: list[str], usage: str, listed: list[str], in_process: Run) -> None:
    code, out, err = in_process(*args)
    assert (code, out) == (2, "")
    assert err.startswith(usage), err
    assert "_command" not in err  # argparse's internal name for the subcommand
    for command in listed:
        assert f"\n    {command} " in err, err
    assert err.splitlines()[-1].startswith("responder: error: ")


def test_deliver_keeps_its_exit_statuses_on_a_bad_command_line(make_config: ConfigFactory) -> None:
    for args in (["deliver", "--no-such-flag"], ["deliver"]):
        result = run_hook(make_config(), *args, stdin=sample("personal.eml"))
        assert result.returncode == 75, result.stderr.decode()
        assert b"usage:" not in result.stderr


def test_log_limit_zero_and_an_empty_log(make_config: ConfigFactory, in_process: Run) -> None:
    config = str(make_config())
    assert in_process("--config", config, "log") == (0, "no decisions recorded\n", "")
    assert in_process("--config", config, "log", "--sender", "bob@example.org")[1] == (
        "no decisions recorded for the addresses given\n"
    )
    result = run_hook(Path(config), *deliver_args("", "alice@example.com"), stdin=sample("personal.eml"))
    assert result.returncode == 0
    assert in_process("--config", config, "log", "--limit", "0") == (0, "", "")
    assert in_process("--config", config, "log", "--limit", "0", "--json")[1] == "[]\n"
    lines = in_process("--config", config, "log")[1].splitlines()
    assert lines[0].split() == [
        "TIME",
        "(UTC)",
        "ACTION",
        "REASON",
        "SENDER",
        "RECIPIENT",
        "QUEUE",
        "ID",
        "DETAIL",
    ]
    assert lines[1].split()[2:6] == ["suppress", "null-sender", "<>", "alice@example.com"]
    assert len(lines) == 2


def test_lists_have_column_headings(make_config: ConfigFactory, in_process: Run) -> None:
    config = str(make_config())
    assert in_process("--config", config, "vacation", "list")[1] == "no vacations\n"
    assert in_process("--config", config, "bounce", "list")[1] == "no retired addresses\n"
    in_process("--config", config, "vacation", "set", "alice@example.com", "--message", "away")
    in_process("--config", config, "bounce", "set", "carol@example.com", "--message", "gone")
    vacations = in_process("--config", config, "vacation", "list")[1].splitlines()
    assert vacations[0].split() == ["ADDRESS", "STATUS", "START", "END", "TIMEZONE", "INTERVAL"]
    assert vacations[1].split() == ["alice@example.com", "active", "-", "-", "UTC", "7d"]
    # Each column starts where its heading does.
    assert vacations[1].index("active") == vacations[0].index("STATUS")
    retired = in_process("--config", config, "bounce", "list")[1].splitlines()
    assert retired[0].split() == ["ADDRESS", "STATE", "STATUS", "START", "END", "TIMEZONE"]
    assert retired[1].split() == ["carol@example.com", "active", "5.1.6", "-", "-", "UTC"]


def test_show_gives_the_interval_that_applies(make_config: ConfigFactory, in_process: Run) -> None:
    config = str(make_config())
    code, _out, err = in_process(
        "--config", config, "vacation", "set", "alice@example.com", "--message", "away", "--interval", "5m"
    )
    assert code == 0 and "kept between 1d and 60d" in err
    text = in_process("--config", config, "vacation", "show", "alice@example.com")[1]
    assert "interval:  1d (set to 5m; kept between reply.min_interval and reply.max_interval)\n" in text
    shown = json.loads(in_process("--config", config, "vacation", "show", "alice@example.com", "--json")[1])
    assert (shown["interval"], shown["interval_set"]) == ("1d", "5m")
    in_process("--config", config, "vacation", "set", "bob@example.com", "--message", "away")
    text = in_process("--config", config, "vacation", "show", "bob@example.com")[1]
    assert "interval:  7d (reply.default_interval)\n" in text


def test_explain_at_a_terminal_says_what_it_waits_for(make_config: ConfigFactory, in_process: Run) -> None:
    config = str(make_config())
    controller, terminal = pty.openpty()
    os.write(controller, b"From: Bob <bob@example.org>\nSubject: hi\n\nHello.\n\x04")
    with os.fdopen(terminal, "rb", buffering=0) as stdin:
        args = [
            "--config",
            config,
            "explain",
            "--sender",
            "bob@example.org",
            "--recipient",
            "alice@example.com",
        ]
        code, out, err = in_process(*args, stdin=stdin)
    os.close(controller)
    assert code == 0
    assert "reading the message from standard input; end it with Ctrl-D" in err
    assert out.splitlines()[:2] == ["action: suppress", "reason: no-vacation"]
    # Not at a terminal (a file, a pipe): nothing extra.
    with (MESSAGES / "personal.eml").open("rb") as stdin:
        assert "Ctrl-D" not in in_process(*args, stdin=stdin)[2]


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgres://responder@127.0.0.1:1/responder", "write postgresql+psycopg://"),
        ("postgresql://responder@127.0.0.1:1/responder", "write postgresql+psycopg://"),
        ("mysql://responder@127.0.0.1:1/responder", "write mysql+pymysql://"),
    ],
)
def test_database_urls_for_missing_drivers_name_the_url_to_write(
    url: str, named: str, make_config: ConfigFactory, in_process: Run
) -> None:
    pytest.importorskip("psycopg")
    if importlib.util.find_spec("psycopg2" if url.startswith("postgresql:") else "MySQLdb"):
        pytest.skip("the scheme's default driver is installed here: the URL works")
    code, _out, err = in_process("--config", str(make_config(database={"url": url})), "db", "current")
    assert code == 1
    assert err.startswith("responder: error: bad value for database.url: ") and named in err, err
    assert "Can't load plugin" not in err and "No module named" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["vacation", "list"],
        ["vacation", "show", "alice@example.com"],
        ["vacation", "set", "alice@example.com", "--message", "away"],
        ["bounce", "list"],
        ["log"],
        ["limits", "show"],
        ["explain", "--sender", "bob@example.org", "--recipient", "alice@example.com"],
    ],
    ids=lambda args: "-".join(args[:2]),
)
def test_commands_other_than_db_upgrade_never_create_the_database(
    args: list[str], make_config: ConfigFactory, tmp_path: Path, in_process: Run
) -> None:
    path = tmp_path / "missing.sqlite3"
    config = str(make_config(database={"url": f"sqlite:///{path}"}))
    with (MESSAGES / "personal.eml").open("rb") as stdin:
        code, _out, err = in_process("--config", config, *args, stdin=stdin)
    assert not path.exists()
    if args[:2] != ["db", "current"]:
        assert code == 1
        assert f"database file {path} does not exist: run `responder db upgrade`" in err


def test_the_hook_never_creates_the_database(make_config: ConfigFactory, tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite3"
    config = make_config(database={"url": f"sqlite:///{path}"})
    for message in ("personal.eml", "list-id.eml"):  # the full path and the header path
        result = run_hook(
            config, *deliver_args("bob@example.org", "alice@example.com"), stdin=sample(message)
        )
        assert result.returncode in (0, 75), result.stderr.decode()
        assert not path.exists()


def test_from_with_an_obsolete_phrase_is_taken(make_config: ConfigFactory, sink: SmtpSink) -> None:
    """RFC 5322 section 4.1 obs-phrase: a period in an unquoted display name, as people write it."""
    config = make_config()
    _ok(
        config,
        "vacation",
        "set",
        "g@example.com",
        "--message",
        "away",
        "--from",
        "Günther M. Karotte <g@example.com>",
    )
    shown = json.loads(_ok(config, "vacation", "show", "g@example.com", "--json"))
    assert shown["from"] == '"Günther M. Karotte" <g@example.com>'
    result = run_hook(
        config,
        *deliver_args("bob@example.org", "g@example.com"),
        stdin=sample("personal.eml").replace(b"alice@example.com", b"g@example.com"),
    )
    assert result.returncode == 0, result.stderr.decode()
    [reply] = sink.wait_for(1)
    [sender] = reply.message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Günther M. Karotte", "g@example.com")
    assert not reply.message["From"].defects


def test_log_escapes_what_older_rows_hold(make_config: ConfigFactory, store: Store, in_process: Run) -> None:
    """A row written before control characters were escaped on the way in is escaped on the way out."""
    when = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    fields = {"queue_id": "Q1", "message_id": "<m@x>", "action": "suppress", "reason": "malformed"}
    store.record(DecisionRecord(at=when, sender="bob\r\n\x1b[2J", recipient=ALICE, detail="", **fields))
    out = in_process("--config", str(make_config()), "log")[1]
    assert "bob\\x0d\\x0a\\x1b[2J" in out and len(out.splitlines()) == 2
