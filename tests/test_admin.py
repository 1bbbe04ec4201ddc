"""Administrator commands as a new user types them: vacations, schedules in time zones, the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample


def _ok(config: Path, *args: str) -> str:
    result = run_hook(config, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _fails(config: Path, *args: str) -> str:
    result = run_hook(config, *args)
    assert result.returncode == 1, result.stdout.decode()
    return result.stderr.decode()


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
        "subject": "Absente",
        "from": "Alice Exemple <alice@example.com>",
        "template": None,
        "aliases": ["a.exemple@example.com", "alice@example.net"],
        "message": "Je suis absente. ✈\n",
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
    assert _ok(config, "vacation", "list") == ""


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
    assert "none" in _ok(config, "db", "current")
    assert "vacation" not in _fails(config, "vacation", "list")
    head = _ok(config, "db", "upgrade").strip()
    assert _ok(config, "db", "current").strip() == head
