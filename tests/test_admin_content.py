"""``vacation set`` with HTML, external, audience and language options; ``show --json``; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from responder.decide.content import MAX_MESSAGE
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_admin, run_hook, vacation_set

ALICE = "alice@example.com"


def _show(config: Path) -> dict[str, Any]:
    result = run_admin(config, "vacation", "show", ALICE, "--json")
    assert result.returncode == 0, result.stderr.decode()
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def _message(extra: str = "") -> bytes:
    return (
        f"{extra}From: Bob <bob@partner.example>\r\nTo: {ALICE}\r\nSubject: Offer\r\n"
        "Message-ID: <o1@partner.example>\r\n\r\nHello.\r\n"
    ).encode()


def _explain(config: Path, message: bytes) -> dict[str, Any]:
    args = ["explain", "--json", "--sender", "bob@partner.example", "--recipient", ALICE]
    result = run_admin(config, *args, stdin=message)
    assert result.returncode == 0, result.stderr.decode()
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_set_and_show_every_content_field(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    html = tmp_path / "away.html"
    html.write_text("<p>Away until <b>{{ end_date }}</b>.</p>", encoding="utf-8")
    vacation_set(
        config,
        ALICE,
        "--message", "Internal: call Bob.",
        "--html-file", str(html),
        "--external-message", "Out of office.",
        "--external-subject", "Away",
        "--external-html", "<p>Out of <i>office</i>.</p>",
        "--external-audience", "none",
        "--default-language", "EN",
    )  # fmt: skip
    vacation_set(config, ALICE, "--language", "de", "--external-message", "Nicht im Büro.")
    vacation_set(config, ALICE, "--language", "de", "--external-subject", "Abwesend")
    shown = _show(config)
    assert shown["message"] == "Internal: call Bob."
    assert shown["html_message"] == "<p>Away until <b>{{ end_date }}</b>.</p>"
    assert (shown["external_message"], shown["external_subject"]) == ("Out of office.", "Away")
    assert shown["external_html_message"] == "<p>Out of <i>office</i>.</p>"
    assert (shown["external_audience"], shown["default_language"]) == ("none", "en")
    # The second --language de set the subject and kept the message of the first.
    assert shown["translations"] == [
        {
            "audience": "external",
            "language": "de",
            "subject": "Abwesend",
            "message": "Nicht im Büro.",
            "html_message": None,
        }
    ]
    vacation_set(config, ALICE, "--remove-language", "de", "--external-audience", "all")
    shown = _show(config)
    assert shown["translations"] == [] and shown["external_audience"] == "all"
    # --language naming the default language sets the default message.
    vacation_set(config, ALICE, "--language", "en", "--message", "Internal, again.")
    assert _show(config)["message"] == "Internal, again."


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--language", "dee", "--message", "x"], "--language: unknown language 'dee'"),
        (["--default-language", "de_CH"], "--default-language: not a BCP 47 language tag"),
        (["--remove-language", "1234"], "--remove-language: not a BCP 47 language tag"),
        (["--message", "x" * (MAX_MESSAGE + 1)], f"--message: {MAX_MESSAGE + 1} characters; at most"),
        (["--external-subject", "y" * 1000], "--external-subject: 1000 characters; at most 998"),
        (["--message", "Back {{ ende }}"], "--message: unknown placeholder {{ ende }}"),
        (["--html", "<p>{{ nmae }}</p>"], "--html: unknown placeholder {{ nmae }}"),
        (["--html", "<script>x</script>"], "--html: nothing is left once sanitised"),
        (["--message", ""], "the vacation needs --message"),
        (["--external-subject", "Away"], "--external-subject needs an external message"),
        (["--language", "de", "--subject", "Weg"], "the internal message in de needs a text or HTML"),
    ],
)
def test_bad_content_is_refused_and_nothing_written(
    make_config: ConfigFactory, options: list[str], says: str
) -> None:
    config = make_config()
    vacation_set(config, ALICE, "--message", "Away.", "--subject", "Before")
    before = _show(config)
    result = run_admin(config, "vacation", "set", ALICE, *options)
    assert result.returncode == 1
    assert says in result.stderr.decode()
    after = _show(config)
    assert {k: v for k, v in after.items() if k != "updated"} == {
        k: v for k, v in before.items() if k != "updated"
    }


def test_a_new_vacation_needs_its_default_message_first(make_config: ConfigFactory) -> None:
    config = make_config()
    result = run_admin(config, "vacation", "set", ALICE, "--language", "de", "--message", "Weg.")
    assert result.returncode == 1 and "default message" in result.stderr.decode()
    assert run_admin(config, "vacation", "show", ALICE).returncode == 1


def test_a_template_per_language_is_used_for_its_replies(make_config: ConfigFactory, tmp_path: Path) -> None:
    (tmp_path / "vacation.fr.txt.j2").write_text("FR: {{ message }}\n", encoding="utf-8")
    config = make_config(reply={"templates_dir": str(tmp_path)})
    vacation_set(config, ALICE, "--message", "Away.", "--default-language", "en")
    vacation_set(config, ALICE, "--language", "fr-CA", "--message", "Absente.", "--subject", "Absente")
    french = _explain(config, _message("Accept-Language: fr-CA\r\n"))
    assert "language=fr-CA(Accept-Language fr-ca)" in french["detail"]
    assert "\r\n\r\nFR: Absente.\r\n" in french["message"]  # vacation.fr.txt.j2 for fr-CA
    english = _explain(config, _message())
    assert "language=en(default)" in english["detail"] and "FR:" not in english["message"]


def test_a_broken_language_template_is_refused_at_set_and_a_decision_at_delivery(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(reply={"templates_dir": str(tmp_path)})
    vacation_set(config, ALICE, "--message", "Away.")
    (tmp_path / "vacation.de.txt.j2").write_text("{{ message | nosuchfilter }}\n", encoding="utf-8")
    refused = run_admin(config, "vacation", "set", ALICE, "--language", "de", "--message", "Weg.")
    assert refused.returncode == 1 and "vacation.de.txt.j2" in refused.stderr.decode()
    # The template breaks after the German message was saved: the delivery decides, and exits 0.
    (tmp_path / "vacation.de.txt.j2").write_text("{{ message }}\n", encoding="utf-8")
    vacation_set(config, ALICE, "--language", "de", "--message", "Weg.")
    (tmp_path / "vacation.de.txt.j2").write_text("{{ message | nosuchfilter }}\n", encoding="utf-8")
    result = run_hook(
        config,
        *deliver_args("bob@partner.example", ALICE),
        stdin=_message("Accept-Language: de\r\n"),
    )
    assert result.returncode == 0
    assert "action=drop reason=template-error" in result.stderr.decode()
