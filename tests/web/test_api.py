"""The API over a real uvicorn: vacations, retired addresses, templates, audit, explain, limits, changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from responder.decide.records import DecisionRecord
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_admin, run_hook, sample
from tests.sink import SmtpSink
from tests.web.apitools import Api

ALICE = "/api/v1/vacations/alice@example.com"


def test_a_user_sets_reads_switches_off_and_deletes_their_vacation(api: Api) -> None:
    body = {
        "message": "Back on Monday.",
        "subject": "Out of office",
        "start": "2026-12-24T00:00",
        "end": "2027-01-04",
        "timezone": "Europe/Berlin",
        "interval": "3d",
    }
    put = api.ok("PUT", ALICE, api.alice, body)
    assert put["address"] == "alice@example.com"
    assert put["start"] == "2026-12-24T00:00+01:00"
    assert put["end"] == "2027-01-04T00:00+01:00"
    assert put["interval"] == "3d"
    assert put["status"] == "scheduled"
    got = api.ok("GET", ALICE, api.alice)
    assert got == put
    # What a GET returned can be PUT back unchanged (read-only fields are ignored).
    assert api.ok("PUT", ALICE, api.alice, got)["subject"] == "Out of office"
    off = api.ok("POST", ALICE + "/off", api.alice)
    assert off["enabled"] is False and off["status"] == "off"
    assert api.ok("GET", "/api/v1/vacations", api.alice) == [off]
    assert api.ok("DELETE", ALICE, api.alice) == {"address": "alice@example.com", "deleted": True}
    gone = api.call("GET", ALICE, api.alice)
    assert gone.status_code == 404
    assert gone.json()["error"] == {
        "code": "not_found",
        "message": "no vacation for alice@example.com",
        "field": "address",
    }
    changes = api.ok("GET", "/api/v1/changes", api.alice)
    assert [c["action"] for c in changes] == [
        "vacation.delete",
        "vacation.off",
        "vacation.set",
        "vacation.set",
    ]
    assert {c["actor"] for c in changes} == {"user:alice@example.com"}
    assert changes[1]["detail"] == {"enabled": [True, False]}
    assert changes[3]["detail"]["message"] == [None, "Back on Monday."]
    logged = run_admin_changes(api)
    assert "vacation.off" in logged and "user:alice@example.com" in logged


def run_admin_changes(api: Api) -> str:
    from tests.helpers import write_config

    db = api.store.engine.url.render_as_string(hide_password=False)
    path = Path(str(api.store.sqlite_path) + ".toml")
    write_config(path, {"database": {"url": db}})
    result = run_admin(path, "log", "--changes")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "x", "start": "2026-12-24", "end": "2026-12-20"}, "end"),
        ({"message": "x", "start": "2026-12-24", "end": "2026-12-24"}, "end"),
        ({"message": "x", "start": "Christmas"}, "start"),
        ({"message": "x", "end": "2026-13-01"}, "end"),
        ({"message": "x", "timezone": "Mars/Olympus"}, "timezone"),
        ({"message": "x", "subject": "Away\r\nBcc: victim@example.net"}, "subject"),
        ({"message": "x", "subject": "Away\nnext"}, "subject"),
        ({"message": "x", "from": "not an address"}, "from"),
        ({"message": "x", "from": "A <a@example.com>\r\nBcc: v@example.net"}, "from"),
        ({"message": "x", "interval": "soon"}, "interval"),
        ({"message": "x", "template": "../../etc/passwd"}, "template"),
        ({"message": "x", "template": "missing.txt.j2"}, "template"),
        ({"message": "x", "aliases": ["bob@example.com"]}, "aliases"),
        ({"message": "x", "aliases": "alice2@example.com"}, "aliases"),
        ({"message": "x", "enabled": "yes"}, "enabled"),
        ({"message": 42}, "message"),
        ({"message": "x", "colour": "blue"}, "colour"),
        ({"subject": "no message for a new vacation"}, "message"),
        ({"message": "x", "address": "bob@example.com"}, "address"),
        ({"message": "x", "external_audience": "some"}, "external_audience"),
        ({"message": "x", "default_language": "not a tag!"}, "default_language"),
        ({"message": "x", "html_message": "<script>only()</script>"}, "html_message"),
        ({"message": "x", "external_subject": "Out\r\nBcc: v@example.net"}, "external_subject"),
        ({"message": "Back {{ nobody }}"}, "message"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
    api: Api, body: dict[str, object], field: str
) -> None:
    answer = api.call("PUT", ALICE, api.alice, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["field"] == field, error
    assert error["code"] == "invalid_field"
    assert api.call("GET", ALICE, api.alice).status_code == 404
    assert api.ok("GET", "/api/v1/changes", api.admin) == []


def test_the_content_fields_are_those_of_vacation_show_json(api: Api) -> None:
    body = {
        "message": "Back on {{ end_date }}.",
        "html_message": '<p>Back <img src="https://t.example/p.gif">soon</p>',
        "external_subject": "Out of office",
        "external_message": "I am away.",
        "external_audience": "none",
        "default_language": "de",
    }
    shown = api.ok("PUT", ALICE, api.alice, body)
    assert shown["html_message"] == "<p>Back soon</p>"
    assert {k: shown[k] for k in body if k != "html_message"} == {
        k: v for k, v in body.items() if k != "html_message"
    }
    assert shown["translations"] == []
    # The engine replies from what was stored: the sanitised HTML.
    stored = api.store.vacation_for(["alice@example.com"])
    assert stored is not None and stored.html_message == "<p>Back soon</p>"


def test_a_refused_update_leaves_the_vacation_as_it_was(api: Api) -> None:
    before = api.ok("PUT", ALICE, api.alice, {"message": "Away.", "subject": "Away"})
    answer = api.call("PUT", ALICE, api.alice, {"message": "Changed.", "subject": "x\r\ny"})
    assert answer.status_code == 400
    assert api.ok("GET", ALICE, api.alice) == before
    assert len(api.ok("GET", "/api/v1/changes", api.alice)) == 1


def test_not_json_and_not_an_object(api: Api) -> None:
    answer = api.client.put(ALICE, headers=api.alice, content=b"{not json", timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] in ("not_json", "invalid_field")
    assert api.call("PUT", ALICE, api.alice, ["message"]).status_code == 400


def test_a_vacation_for_a_retired_address_is_a_conflict(api: Api) -> None:
    api.ok(
        "PUT",
        "/api/v1/retired/alice@example.com",
        api.admin,
        {"message": "Alice left; write to bob@example.com"},
    )
    answer = api.call("PUT", ALICE, api.admin, {"message": "x"})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "conflict"


def test_retired_addresses_by_token(api: Api) -> None:
    path = "/api/v1/retired/old@example.com"
    made = api.ok(
        "PUT", path, api.helpdesk, {"message": "Gone; write to help@example.com", "status": "5.1.1"}
    )
    assert made["status"] == "5.1.1" and made["state"] == "active"
    assert api.ok("GET", "/api/v1/retired", api.helpdesk) == [made]
    bad = api.call("PUT", path, api.helpdesk, {"status": "4.2.2"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "status"
    assert api.call("GET", "/api/v1/retired", api.alice).status_code == 403
    assert api.ok("DELETE", path, api.helpdesk)["deleted"] is True
    assert api.call("GET", path, api.helpdesk).status_code == 404


def test_templates_written_only_when_they_render(api: Api, tmp_path: Path) -> None:
    listed = api.ok("GET", "/api/v1/templates", api.helpdesk)
    assert {"name": "vacation.txt.j2", "source": "packaged"} in listed
    packaged = api.ok("GET", "/api/v1/templates/vacation.txt.j2", api.helpdesk)
    assert "message" in packaged["text"]
    good = "{{ message }}\n\n-- \nSent for {{ recipient }} to {{ sender }}\n"
    written = api.ok("PUT", "/api/v1/templates/team.txt.j2", api.admin, {"text": good})
    assert "Sent for alice@example.com to sender@example.org" in written["sample"]
    assert (tmp_path / "templates" / "team.txt.j2").read_text() == good
    refused = {
        "{{ undefined_thing }}": "undefined",
        "{% for %}": "",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}": "",
        "{{ message.__class__.__init__.__globals__ }}": "",
    }
    for text, words in refused.items():
        answer = api.call("PUT", "/api/v1/templates/evil.txt.j2", api.admin, {"text": text})
        assert answer.status_code == 400, (text, answer.text)
        assert answer.json()["error"]["field"] == "text"
        assert words in answer.json()["error"]["message"]
    assert not (tmp_path / "templates" / "evil.txt.j2").exists()
    assert api.call("PUT", "/api/v1/templates/..%2Fx.j2", api.admin, {"text": good}).status_code in (400, 404)
    assert api.call("PUT", "/api/v1/templates/team.txt.j2", api.helpdesk, {"text": good}).status_code == 403
    assert api.call("GET", "/api/v1/templates", api.alice).status_code == 403
    # The vacation can now use it, and the reply is rendered with it.
    assert (
        api.ok("PUT", ALICE, api.alice, {"message": "Away.", "template": "team.txt.j2"})["template"]
        == "team.txt.j2"
    )


def _decision(
    at: dt.datetime, sender: str, recipient: str, action: str, reason: str | None
) -> DecisionRecord:
    return DecisionRecord(at, "QID", "<m@example.org>", sender, recipient, action, reason, "")


def test_audit_filters_answer_why_no_reply(api: Api) -> None:
    base = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    api.store.record(_decision(base, "bob@example.org", "alice@example.com", "reply", None))
    api.store.record(
        _decision(
            base + dt.timedelta(hours=1), "bob@example.org", "alice@example.com", "suppress", "interval"
        )
    )
    api.store.record(
        _decision(
            base + dt.timedelta(hours=2), "list@example.org", "alice@example.com", "suppress", "list-header"
        )
    )
    api.store.record(
        _decision(base + dt.timedelta(hours=3), "bob@example.org", "carol@example.org", "reply", None)
    )
    why = api.ok("GET", "/api/v1/audit?sender=bob@example.org&recipient=alice@example.com", api.alice)
    assert [(r["action"], r["reason"]) for r in why] == [("suppress", "interval"), ("reply", None)]
    assert [r["sender"] for r in api.ok("GET", "/api/v1/audit?reason=list-header", api.admin)] == [
        "list@example.org"
    ]
    window = api.ok("GET", "/api/v1/audit?since=2026-11-20T13:00&until=2026-11-20T15:00", api.admin)
    assert [r["reason"] for r in window] == ["list-header", "interval"]
    # Each sees only their own: alice no carol, the example.com helpdesk no example.org.
    assert {r["recipient"] for r in api.ok("GET", "/api/v1/audit", api.alice)} == {"alice@example.com"}
    assert {r["recipient"] for r in api.ok("GET", "/api/v1/audit", api.helpdesk)} == {"alice@example.com"}
    assert len(api.ok("GET", "/api/v1/audit", api.admin)) == 4
    bad = api.call("GET", "/api/v1/audit?since=yesterday", api.admin)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "since"
    reversed_range = api.call("GET", "/api/v1/audit?since=2026-11-21&until=2026-11-20", api.admin)
    assert reversed_range.json()["error"]["field"] == "until"


def test_explain_decides_without_sending_or_recording(api: Api, sink: SmtpSink) -> None:
    api.ok("PUT", ALICE, api.alice, {"message": "I am away until Monday.", "subject": "Away"})
    body = {
        "message": sample("personal.eml").decode(),
        "sender": "bob@example.org",
        "recipient": "alice@example.com",
    }
    decided = api.ok("POST", "/api/v1/explain", api.alice, body)
    assert decided["action"] == "reply", decided
    assert decided["rcpt_to"] == "bob@example.org"
    assert "I am away until Monday." in decided["message"]
    listed = api.ok("POST", "/api/v1/explain", api.alice, {**body, "message": sample("list-id.eml").decode()})
    assert (listed["action"], listed["reason"]) == ("suppress", "list-header")
    assert sink.received() == []
    assert api.ok("GET", "/api/v1/audit", api.admin) == []


def test_rate_limit_counters_show_and_reset(api: Api, make_config: ConfigFactory, sink: SmtpSink) -> None:
    api.ok("PUT", ALICE, api.alice, {"message": "Away."})
    config = make_config()
    result = run_hook(
        config, *deliver_args("bob@example.org", "alice@example.com"), stdin=sample("personal.eml")
    )
    assert result.returncode == 0, result.stderr.decode()
    shown = api.ok("GET", "/api/v1/limits?recipient=alice@example.com", api.helpdesk)
    assert [(c["scope"], c["key"], c["count"]) for c in shown] == [("recipient", "alice@example.com", 1)]
    assert len(api.ok("GET", "/api/v1/limits", api.admin)) == 4
    assert api.call("GET", "/api/v1/limits?sender=bob@example.org", api.helpdesk).status_code == 403
    assert api.ok("POST", "/api/v1/limits/reset", api.helpdesk, {"recipient": "alice@example.com"}) == {
        "reset": 1
    }
    assert api.ok("GET", "/api/v1/limits?recipient=alice@example.com", api.helpdesk) == []
    assert api.call("POST", "/api/v1/limits/reset", api.helpdesk, {"all": True}).status_code == 403
    assert api.ok("POST", "/api/v1/limits/reset", api.admin, {"all": True}) == {"reset": 3}


def test_a_change_through_the_api_applies_to_the_next_message(
    api: Api, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    config = make_config()
    api.ok(
        "PUT",
        ALICE,
        api.helpdesk,
        {"message": "Set by the helpdesk: Alice is ill.", "subject": "Alice is out"},
    )
    first = run_hook(
        config, *deliver_args("bob@example.org", "alice@example.com"), stdin=sample("personal.eml")
    )
    assert first.returncode == 0, first.stderr.decode()
    (reply,) = sink.wait_for(1)
    assert reply.rcpt_tos == ["bob@example.org"]
    assert reply.message["Subject"] == "Alice is out"
    assert "Set by the helpdesk: Alice is ill." in reply.message.get_content()
    api.ok("POST", ALICE + "/off", api.helpdesk)
    sink.clear()
    second = run_hook(
        config, *deliver_args("carol@example.net", "alice@example.com"), stdin=sample("personal.eml")
    )
    assert second.returncode == 0
    assert sink.wait_for(1, timeout=2) == []
    assert (
        api.ok("GET", "/api/v1/changes?address=alice@example.com", api.admin)[0]["actor"] == "token:helpdesk"
    )


def test_openapi_document_lists_the_routes(api: Api) -> None:
    document = api.client.get("/api/v1/openapi.json").json()
    assert "/api/v1/vacations/{address}" in document["paths"]
    assert set(document["paths"]["/api/v1/vacations/{address}"]) == {"get", "put", "delete"}
    assert not any(path.startswith("/jmap") or path.startswith("/.well-known") for path in document["paths"])
