"""A template that `vacation set` or `bounce set` accepts renders at delivery: one variable set per kind."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from responder.decide.records import Retirement, Vacation
from responder.decide.templates import SAMPLE_SENDER, SAMPLE_SUBJECT, bounce_variables, reply_variables
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample
from tests.sink import SmtpSink

ALICE = "alice@example.com"
SENDER = "bob@example.org"
NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def _reply_names() -> list[str]:
    vacation = Vacation(
        0, ALICE, True, "away", None, None, None, None, None, "UTC", None, (), NOW, NOW
    )  # fmt: skip
    return sorted(reply_variables(vacation, SAMPLE_SENDER, SAMPLE_SUBJECT, dt.timedelta(days=7)))


def _bounce_names() -> list[str]:
    retirement = Retirement(0, ALICE, "gone", "5.1.6", None, None, "UTC", NOW, NOW)
    return sorted(bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, "mx.example.net", NOW))


def _every_variable(directory: Path, names: list[str]) -> str:
    (directory / "every.txt.j2").write_text("".join(f"{name}=[{{{{ {name} }}}}]\n" for name in names))
    return "every.txt.j2"


def _run(config: Path, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    result = run_hook(config, *args, stdin=stdin)
    return result.returncode, result.stderr.decode()


def test_reply_template_using_every_variable_passes_set_and_renders(
    make_config: ConfigFactory, tmp_path: Path, sink: SmtpSink
) -> None:
    names = _reply_names()
    assert {"message", "recipient", "sender", "subject", "start", "end", "timezone", "interval"} <= set(names)
    template = _every_variable(tmp_path, names)
    config = make_config(reply={"templates_dir": str(tmp_path)})
    options = ("--message", "I am away.", "--template", template, "--interval", "3d")
    assert _run(config, "vacation", "set", ALICE, *options, "--end", "2099-01-01") == (0, "")
    code, log = _run(config, *deliver_args(SENDER, ALICE), stdin=sample("personal.eml"))
    assert code == 0 and "action=reply" in log, log
    body = sink.wait_for(1)[0].message.get_body()
    assert body is not None
    text = body.get_content()
    for expected in ("message=[I am away.]", f"sender=[{SENDER}]", "subject=[Café meeting]", "interval=[3d]"):
        assert expected in text
    assert "start=[None]" in text and "end=[2099-01-01 00:00:00+00:00]" in text


def test_bounce_template_using_every_variable_passes_set_and_renders(
    make_config: ConfigFactory, tmp_path: Path, sink: SmtpSink
) -> None:
    template = _every_variable(tmp_path, _bounce_names())
    config = make_config(reply={"templates_dir": str(tmp_path)}, bounce={"template": template})
    assert _run(config, "bounce", "set", ALICE, "--message", "Alice has left.", "--status", "5.2.1") == (
        0,
        "",
    )
    code, log = _run(config, *deliver_args(SENDER, ALICE), stdin=sample("personal.eml"))
    assert code == 0 and "action=bounce" in log, log
    human = next(sink.wait_for(1)[0].message.iter_parts())
    text = human.get_content()
    for expected in (
        "status=[5.2.1]",
        f"sender=[{SENDER}]",
        "reporting_mta=[mx.example.net]",
        "subject=[Café",
    ):
        assert expected in text


def test_unknown_variable_is_refused_at_set(make_config: ConfigFactory, tmp_path: Path) -> None:
    (tmp_path / "unknown.txt.j2").write_text("{{ message }} {{ nosuchvariable }}\n")
    config = make_config(reply={"templates_dir": str(tmp_path)}, bounce={"template": "unknown.txt.j2"})
    code, err = _run(config, "vacation", "set", ALICE, "--message", "away", "--template", "unknown.txt.j2")
    assert code == 1 and "nosuchvariable" in err
    code, err = _run(config, "bounce", "set", "carol@example.com", "--message", "gone")
    assert code == 1 and "nosuchvariable" in err


def test_a_template_needing_a_start_is_refused_for_a_vacation_without_one(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """At delivery ``start`` is None when the vacation has none; set used to check it with a date."""
    (tmp_path / "start.txt.j2").write_text("Away from {{ start.strftime('%d %B') }}.\n")
    config = make_config(reply={"templates_dir": str(tmp_path)})
    code, err = _run(config, "vacation", "set", ALICE, "--message", "away", "--template", "start.txt.j2")
    assert code == 1 and "strftime" in err, err
    options = ("--message", "away", "--template", "start.txt.j2", "--start", "2026-11-01")
    assert _run(config, "vacation", "set", ALICE, *options) == (0, "")
