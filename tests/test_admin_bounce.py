"""`responder bounce set/show/list/delete`; an address is on vacation or retired, never both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.helpers import run_admin, vacation_set

ALICE = "alice@example.com"


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_admin(config, "bounce", *args)


def _ok(config: Path, *args: str) -> str:
    result = _run(config, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _error(config: Path, *args: str) -> str:
    result = _run(config, *args)
    assert result.returncode == 1, result.stdout.decode()
    assert result.stdout == b""
    return result.stderr.decode()


def test_set_show_list_delete(make_config: ConfigFactory) -> None:
    config = make_config()
    out = _ok(config, "set", "Alice@Example.COM", "--message", "Alice has left.\nWrite to bob@example.com.")
    assert out == f"{ALICE}: retired, active (5.1.6)\n"
    shown = json.loads(_ok(config, "show", ALICE, "--json"))
    assert shown["address"] == ALICE
    assert shown["state"] == "active"
    assert shown["status"] == "5.1.6"
    assert shown["message"] == "Alice has left.\nWrite to bob@example.com."
    assert shown["smtp_text"] == "Alice has left. Write to bob@example.com."
    assert (shown["start"], shown["end"], shown["timezone"]) == (None, None, "UTC")
    text = _ok(config, "show", ALICE)
    assert "status:    5.1.6" in text and "  Write to bob@example.com." in text

    # A later set changes only what it names.
    _ok(config, "set", ALICE, "--status", "5.2.1")
    shown = json.loads(_ok(config, "show", ALICE, "--json"))
    assert (shown["status"], shown["message"]) == ("5.2.1", "Alice has left.\nWrite to bob@example.com.")

    _ok(config, "set", "carol@example.com", "--message", "Carol retired.", "--start", "2099-01-01")
    listed = json.loads(_ok(config, "list", "--json"))
    assert [(r["address"], r["state"]) for r in listed] == [
        (ALICE, "active"),
        ("carol@example.com", "scheduled"),
    ]
    lines = _ok(config, "list").splitlines()
    assert lines[0].split()[:3] == ["ADDRESS", "STATE", "STATUS"]
    assert len(lines) == 3 and lines[2].startswith("carol@example.com") and "scheduled" in lines[2]

    assert _ok(config, "delete", ALICE) == f"{ALICE}: deleted\n"
    assert "is not retired" in _error(config, "show", ALICE)
    assert "is not retired" in _error(config, "delete", ALICE)


def test_schedule_in_a_time_zone(make_config: ConfigFactory) -> None:
    config = make_config()
    _ok(
        config,
        "set",
        ALICE,
        "--message",
        "gone",
        "--start",
        "2026-03-29T02:30",
        "--end",
        "2099-01-01",
        "--timezone",
        "Europe/Berlin",
    )
    shown = json.loads(_ok(config, "show", ALICE, "--json"))
    # 02:30 does not exist on that day in Berlin (clocks go 02:00 -> 03:00): fold 0 reads it as +01:00.
    assert shown["start"] == "2026-03-29T03:30+02:00"
    assert shown["end"] == "2099-01-01T00:00+01:00"
    assert shown["timezone"] == "Europe/Berlin"
    assert shown["state"] == "active"
    _ok(config, "set", ALICE, "--end", "")
    assert json.loads(_ok(config, "show", ALICE, "--json"))["end"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", ALICE], "needs --message"),
        (["set", ALICE, "--message", " \n "], "message is empty"),
        (["set", ALICE, "--message", "x", "--status", "4.1.6"], "not a permanent RFC 3463 status"),
        (["set", ALICE, "--message", "x", "--status", "5.9.1"], "not a permanent RFC 3463 status"),
        (["set", ALICE, "--message", "x", "--status", "550"], "not a permanent RFC 3463 status"),
        (["set", ALICE, "--message", "x", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["set", ALICE, "--message", "x", "--start", "tomorrow"], "not an ISO 8601"),
        (
            ["set", ALICE, "--message", "x", "--start", "2027-01-02", "--end", "2027-01-01"],
            "--end must be after",
        ),
        (["set", "not-an-address", "--message", "x"], "not an email address"),
        (["set", ALICE, "--message-file", "/nonexistent/file"], "cannot read"),
    ],
)
def test_bad_input_is_refused_and_nothing_saved(
    make_config: ConfigFactory, args: list[str], message: str
) -> None:
    config = make_config()
    assert message in _error(config, *args)
    assert json.loads(_ok(config, "list", "--json")) == []


def test_message_file(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    text = tmp_path / "message.txt"
    text.write_text("Jörg has left.\n", encoding="utf-8")
    _ok(config, "set", ALICE, "--message-file", str(text))
    shown = json.loads(_ok(config, "show", ALICE, "--json"))
    assert (shown["message"], shown["smtp_text"]) == ("Jörg has left.\n", "Jorg has left.")


def test_vacation_or_retired_never_both(make_config: ConfigFactory) -> None:
    config = make_config()
    vacation_set(config, "carol@example.com", "--message", "I am away.")
    refused = _error(config, "set", "carol@example.com", "--message", "gone")
    assert "has a vacation" in refused and "responder vacation delete carol@example.com" in refused

    _ok(config, "set", ALICE, "--message", "gone")
    result = run_admin(config, "vacation", "set", ALICE, "--message", "I am away.")
    assert result.returncode == 1
    assert (
        "is retired" in result.stderr.decode()
        and f"responder bounce delete {ALICE}" in result.stderr.decode()
    )

    # Once the other entry is gone, the change goes through.
    assert run_admin(config, "vacation", "delete", "carol@example.com").returncode == 0
    _ok(config, "set", "carol@example.com", "--message", "gone")
    _ok(config, "delete", ALICE)
    vacation_set(config, ALICE, "--message", "I am away.")


def test_broken_bounce_template_is_refused_at_set(make_config: ConfigFactory, tmp_path: Path) -> None:
    (tmp_path / "bad.txt.j2").write_text("{{ nosuchvariable }}")
    config = make_config(bounce={"template": "bad.txt.j2"}, reply={"templates_dir": str(tmp_path)})
    assert "nosuchvariable" in _error(config, "set", ALICE, "--message", "gone")
