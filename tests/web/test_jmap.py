"""JMAP over HTTPS: jmapc (a client nobody here wrote) and raw requests, the session and VacationResponse."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jmapc import Client
from jmapc.methods import CustomMethod, CustomResponse

from responder.store.database import Store
from responder.web.jmap import account_id
from tests.certs import TlsFiles
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, run_hook, sample
from tests.imapserver import USERS
from tests.sink import SmtpSink
from tests.web.apitools import ADMIN_TOKEN, add_tokens, basic, bearer
from tests.web.conftest import ServeFactory, SettingsFactory

CORE = "urn:ietf:params:jmap:core"
VACATION = "urn:ietf:params:jmap:vacationresponse"
ALICE = "alice@example.com"


@dataclass
class Jmap:
    host: str
    url: str
    tls: TlsFiles
    client: httpx.Client

    def session(self, who: dict[str, str]) -> httpx.Response:
        return self.client.get("/.well-known/jmap", headers=who)

    def post(self, who: dict[str, str], body: Any, raw: bytes | None = None) -> httpx.Response:
        if raw is not None:
            return self.client.post(
                "/jmap/api", headers={**who, "Content-Type": "application/json"}, content=raw
            )
        return self.client.post("/jmap/api", headers=who, json=body)

    def calls(
        self, who: dict[str, str], *calls: list[Any], using: list[str] | None = None
    ) -> list[list[Any]]:
        answer = self.post(who, {"using": using or [CORE, VACATION], "methodCalls": list(calls)})
        assert answer.status_code == 200, answer.text
        responses: list[list[Any]] = answer.json()["methodResponses"]
        return responses


@pytest.fixture
def jmap(
    make_settings: SettingsFactory, serve: ServeFactory, web_tls: TlsFiles, store: Store
) -> Iterator[Jmap]:
    add_tokens(store)
    served = serve(make_settings(web={"tls_cert": str(web_tls.cert), "tls_key": str(web_tls.key)}))
    host = f"127.0.0.1:{served.port}"
    context = ssl.create_default_context(cafile=web_tls.ca)
    with httpx.Client(base_url=served.url, verify=context, timeout=60) as client:
        yield Jmap(host, served.url, web_tls, client)


def _jmapc(jmap: Jmap, address: str) -> Client:
    client = Client.create_with_password(jmap.host, address, USERS[address])
    # Only the test CA: REQUESTS_CA_BUNDLE and the like in the environment would replace it.
    client.requests_session.trust_env = False
    client.requests_session.verify = str(jmap.tls.ca)
    return client


def _method(name: str, data: dict[str, Any]) -> CustomMethod:
    method = CustomMethod(data=data)
    method.jmap_method = name
    # CustomMethod resets its class-wide `using`; the instance carries the capabilities it needs.
    method.using = {CORE, VACATION}  # type: ignore[misc]
    return method


def test_jmapc_reads_and_sets_the_vacation_response(
    jmap: Jmap, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    client = _jmapc(jmap, ALICE)
    session = client.jmap_session
    assert session.username == ALICE
    assert session.api_url == f"{jmap.url}/jmap/api"
    assert {CORE, VACATION} <= session.capabilities.urns
    assert client.account_id == account_id(ALICE)
    got = client.request(_method("VacationResponse/get", {"accountId": client.account_id, "ids": None}))
    assert isinstance(got, CustomResponse) and got.data is not None
    assert got.data["list"] == [
        {
            "id": "singleton",
            "isEnabled": False,
            "fromDate": None,
            "toDate": None,
            "subject": None,
            "textBody": None,
            "htmlBody": None,
        }
    ]
    patch = {
        "isEnabled": True,
        "fromDate": "2026-11-01T00:00:00Z",
        "toDate": "2027-01-10T00:00:00Z",
        "subject": "Out until January",
        "textBody": "Set from my mail client.",
    }
    done = client.request(
        _method("VacationResponse/set", {"accountId": client.account_id, "update": {"singleton": patch}})
    )
    assert isinstance(done, CustomResponse) and done.data is not None
    assert done.data["updated"] == {"singleton": None}
    assert done.data["oldState"] != done.data["newState"]
    again = client.request(_method("VacationResponse/get", {"accountId": client.account_id}))
    assert isinstance(again, CustomResponse) and again.data is not None
    assert again.data["list"][0] == {"id": "singleton", "htmlBody": None, **patch}
    assert again.data["state"] == done.data["newState"]
    # The next message to alice gets exactly that reply.
    result = run_hook(make_config(), *deliver_args("bob@example.org", ALICE), stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    (reply,) = sink.wait_for(1)
    assert reply.message["Subject"] == "Out until January"
    assert "Set from my mail client." in reply.message.get_content()


def test_an_html_body_is_stored_sanitised_and_sent_next_to_the_text(
    jmap: Jmap, make_config: ConfigFactory, sink: SmtpSink
) -> None:
    who = basic(ALICE)
    me = account_id(ALICE)
    html = '<p onclick="x()">Back <b>Monday</b></p><img src="https://t.example/p.gif"><script>y()</script>'
    patch = {"isEnabled": True, "subject": "Away", "textBody": "Back Monday.", "htmlBody": html}
    (done,) = jmap.calls(
        who, ["VacationResponse/set", {"accountId": me, "update": {"singleton": patch}}, "1"]
    )
    assert done[1]["updated"] == {"singleton": None}, done
    (got,) = jmap.calls(who, ["VacationResponse/get", {"accountId": me}, "2"])
    stored = got[1]["list"][0]["htmlBody"]
    assert "<b>Monday</b>" in stored
    assert not any(bad in stored for bad in ("script", "onclick", "img", "t.example"))
    result = run_hook(make_config(), *deliver_args("bob@example.org", ALICE), stdin=sample("personal.eml"))
    assert result.returncode == 0, result.stderr.decode()
    (reply,) = sink.wait_for(1)
    assert reply.message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in reply.message.iter_parts()}
    assert "Back Monday." in parts["text/plain"]
    assert "<b>Monday</b>" in parts["text/html"] and "t.example" not in parts["text/html"]


def test_session_object_by_raw_request(jmap: Jmap) -> None:
    answer = jmap.session(basic(ALICE))
    assert answer.status_code == 200
    session = answer.json()
    core = session["capabilities"][CORE]
    for limit in (
        "maxSizeUpload",
        "maxConcurrentUpload",
        "maxSizeRequest",
        "maxConcurrentRequests",
        "maxCallsInRequest",
        "maxObjectsInGet",
        "maxObjectsInSet",
        "collationAlgorithms",
    ):
        assert limit in core
    assert session["capabilities"][VACATION] == {}
    me = account_id(ALICE)
    assert session["accounts"] == {
        me: {
            "name": ALICE,
            "isPersonal": True,
            "isReadOnly": False,
            "accountCapabilities": {CORE: {}, VACATION: {}},
        }
    }
    assert session["primaryAccounts"][VACATION] == me
    for key in ("apiUrl", "downloadUrl", "uploadUrl", "eventSourceUrl", "state", "username"):
        assert session[key]
    assert "{accountId}" in session["downloadUrl"] and "{blobId}" in session["downloadUrl"]
    assert jmap.session({}).status_code == 401
    assert jmap.session(basic(ALICE, "wrong")).status_code == 401


def test_another_users_account_is_not_found(jmap: Jmap) -> None:
    bob = account_id("bob@example.com")
    calls = [
        ["VacationResponse/get", {"accountId": bob}, "g"],
        ["VacationResponse/set", {"accountId": bob, "update": {"singleton": {"isEnabled": True}}}, "s"],
    ]
    responses = jmap.calls(basic(ALICE), *calls)
    assert responses == [
        ["error", {"type": "accountNotFound"}, "g"],
        ["error", {"type": "accountNotFound"}, "s"],
    ]
    assert jmap.calls(basic("bob@example.com"), calls[0])[0][1]["list"][0]["isEnabled"] is False


def test_tokens_see_the_accounts_in_their_scope(jmap: Jmap, store: Store) -> None:
    me = account_id(ALICE)
    jmap.calls(
        basic(ALICE),
        ["VacationResponse/set", {"accountId": me, "update": {"singleton": {"isEnabled": True}}}, "0"],
    )
    admin = jmap.session(bearer(ADMIN_TOKEN)).json()
    assert list(admin["accounts"]) == [me]
    assert (
        jmap.calls(bearer(ADMIN_TOKEN), ["VacationResponse/get", {"accountId": me}, "0"])[0][0]
        == "VacationResponse/get"
    )


def test_request_level_errors(jmap: Jmap) -> None:
    who = basic(ALICE)
    not_json = jmap.post(who, None, raw=b"{not json")
    assert not_json.status_code == 400
    assert not_json.json()["type"] == "urn:ietf:params:jmap:error:notJSON"
    not_request = jmap.post(who, {"using": [CORE], "methodCalls": [["Core/echo", {}]]})
    assert not_request.json()["type"] == "urn:ietf:params:jmap:error:notRequest"
    unknown = jmap.post(who, {"using": [CORE, "urn:ietf:params:jmap:mail"], "methodCalls": []})
    assert unknown.json()["type"] == "urn:ietf:params:jmap:error:unknownCapability"
    too_many = jmap.post(
        who, {"using": [CORE], "methodCalls": [["Core/echo", {}, str(i)] for i in range(17)]}
    )
    assert too_many.json()["type"] == "urn:ietf:params:jmap:error:limit"
    assert too_many.json()["limit"] == "maxCallsInRequest"


def test_method_level_errors(jmap: Jmap) -> None:
    who = basic(ALICE)
    me = account_id(ALICE)
    responses = jmap.calls(
        who,
        ["Mailbox/get", {"accountId": me}, "a"],
        ["VacationResponse/get", {"accountId": me, "bogus": 1}, "b"],
        ["VacationResponse/get", {"accountId": me, "ids": ["singleton", "other"]}, "c"],
        ["VacationResponse/set", {"accountId": me, "create": {"x": {}}, "destroy": ["singleton"]}, "d"],
        ["VacationResponse/set", {"accountId": me, "update": {"other": {}}}, "e"],
        ["VacationResponse/set", {"accountId": me, "ifInState": "stale"}, "f"],
        ["Core/echo", {"hello": [1, 2]}, "g"],
    )
    assert responses[0] == ["error", {"type": "unknownMethod"}, "a"]
    assert responses[1][0] == "error" and responses[1][1]["type"] == "invalidArguments"
    assert responses[2][1]["notFound"] == ["other"]
    assert responses[3][1]["notCreated"]["x"]["type"] == "singleton"
    assert responses[3][1]["notDestroyed"]["singleton"]["type"] == "singleton"
    assert responses[4][1]["notUpdated"] == {"other": {"type": "notFound"}}
    assert responses[5] == ["error", {"type": "stateMismatch"}, "f"]
    assert responses[6] == ["Core/echo", {"hello": [1, 2]}, "g"]
    # A method of a capability not in `using` is unknown.
    only_core = jmap.calls(who, ["VacationResponse/get", {"accountId": me}, "h"], using=[CORE])
    assert only_core == [["error", {"type": "unknownMethod"}, "h"]]


@pytest.mark.parametrize(
    ("patch", "prop"),
    [
        ({"fromDate": "2026-12-24T00:00:00Z", "toDate": "2026-12-20T00:00:00Z"}, "toDate"),
        ({"fromDate": "Christmas"}, "fromDate"),
        ({"fromDate": "2026-12-24T00:00:00"}, "fromDate"),
        ({"subject": "Away\r\nBcc: victim@example.net"}, "subject"),
        ({"htmlBody": "<script>alert(1)</script>"}, "htmlBody"),
        ({"isEnabled": "yes"}, "isEnabled"),
        ({"id": "other"}, "id"),
        ({"color": "blue"}, "color"),
    ],
)
def test_invalid_properties_change_nothing(jmap: Jmap, patch: dict[str, Any], prop: str) -> None:
    who = basic(ALICE)
    me = account_id(ALICE)
    before = jmap.calls(who, ["VacationResponse/get", {"accountId": me}, "0"])[0][1]
    (response,) = jmap.calls(
        who, ["VacationResponse/set", {"accountId": me, "update": {"singleton": patch}}, "1"]
    )
    error = response[1]["notUpdated"]["singleton"]
    assert error["type"] == "invalidProperties", error
    assert error["properties"] == [prop]
    assert response[1]["oldState"] == response[1]["newState"]
    assert jmap.calls(who, ["VacationResponse/get", {"accountId": me}, "2"])[0][1] == before


def test_result_references(jmap: Jmap) -> None:
    me = account_id(ALICE)
    responses = jmap.calls(
        basic(ALICE),
        ["VacationResponse/get", {"accountId": me}, "0"],
        [
            "VacationResponse/get",
            {
                "accountId": me,
                "#ids": {"resultOf": "0", "name": "VacationResponse/get", "path": "/list/*/id"},
            },
            "1",
        ],
        [
            "VacationResponse/get",
            {"accountId": me, "#ids": {"resultOf": "9", "name": "VacationResponse/get", "path": "/list"}},
            "2",
        ],
    )
    assert responses[1][1]["list"][0]["id"] == "singleton"
    assert responses[2] == ["error", {"type": "invalidResultReference"}, "2"]
