"""Scope: every API route and every JMAP accountId, tried with an address the caller may not manage.

The table below lists every route of /api/v1; a test fails when the app has a route the table lacks,
so a new route cannot be added without its scope test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute

from responder.decide.records import DecisionRecord
from responder.web.jmap import account_id
from tests.helpers import sample
from tests.web.apitools import Api

# (method, path) -> how to ask for the foreign address: (url, JSON body), and whether the route may
# answer 200 with the caller's own entries only ("filter") or must refuse ("refuse").
Ask = Callable[[str], tuple[str, Any]]


@dataclass(frozen=True)
class Case:
    ask: Ask
    kind: str  # "refuse" or "filter"


def _explain(foreign: str) -> tuple[str, Any]:
    message = sample("personal.eml").decode()
    return "/api/v1/explain", {"message": message, "sender": "x@example.net", "recipient": foreign}


CASES: dict[tuple[str, str], Case] = {
    ("GET", "/api/v1/whoami"): Case(lambda a: ("/api/v1/whoami", None), "filter"),
    ("GET", "/api/v1/vacations"): Case(lambda a: ("/api/v1/vacations", None), "filter"),
    ("GET", "/api/v1/vacations/{address}"): Case(lambda a: (f"/api/v1/vacations/{a}", None), "refuse"),
    ("PUT", "/api/v1/vacations/{address}"): Case(
        lambda a: (f"/api/v1/vacations/{a}", {"message": "pwned"}), "refuse"
    ),
    ("POST", "/api/v1/vacations/{address}/off"): Case(
        lambda a: (f"/api/v1/vacations/{a}/off", None), "refuse"
    ),
    ("DELETE", "/api/v1/vacations/{address}"): Case(lambda a: (f"/api/v1/vacations/{a}", None), "refuse"),
    ("GET", "/api/v1/retired"): Case(lambda a: ("/api/v1/retired", None), "filter"),
    ("GET", "/api/v1/retired/{address}"): Case(lambda a: (f"/api/v1/retired/{a}", None), "refuse"),
    ("PUT", "/api/v1/retired/{address}"): Case(
        lambda a: (f"/api/v1/retired/{a}", {"message": "pwned"}), "refuse"
    ),
    ("DELETE", "/api/v1/retired/{address}"): Case(lambda a: (f"/api/v1/retired/{a}", None), "refuse"),
    ("GET", "/api/v1/templates"): Case(lambda a: ("/api/v1/templates", None), "filter"),
    ("GET", "/api/v1/templates/{name}"): Case(
        lambda a: ("/api/v1/templates/vacation.txt.j2", None), "filter"
    ),
    ("PUT", "/api/v1/templates/{name}"): Case(
        lambda a: ("/api/v1/templates/vacation.txt.j2", {"text": "pwned {{ message }}"}), "refuse"
    ),
    ("GET", "/api/v1/audit"): Case(lambda a: (f"/api/v1/audit?recipient={a}", None), "refuse"),
    ("POST", "/api/v1/explain"): Case(_explain, "refuse"),
    ("GET", "/api/v1/limits"): Case(lambda a: (f"/api/v1/limits?recipient={a}", None), "refuse"),
    ("POST", "/api/v1/limits/reset"): Case(lambda a: ("/api/v1/limits/reset", {"recipient": a}), "refuse"),
    ("GET", "/api/v1/changes"): Case(lambda a: (f"/api/v1/changes?address={a}", None), "refuse"),
}

# Unfiltered listings of the same routes: the foreign address must not appear in them.
LISTINGS = ["/api/v1/vacations", "/api/v1/retired", "/api/v1/audit", "/api/v1/changes", "/api/v1/limits"]

# Who tries whose address: a user another user's of the same domain, a domain admin another domain's.
CALLERS = {"alice": "bob@example.com", "helpdesk": "carol@example.org"}


def _who(api: Api, name: str) -> dict[str, str]:
    return api.alice if name == "alice" else api.helpdesk


def test_every_api_route_is_in_the_table() -> None:
    routes = {
        (method, route.path)
        for route in _routes()
        for method in route.methods or ()
        if route.path.startswith("/api/v1/") and method != "HEAD"
    }
    assert routes == set(CASES)


def _routes() -> list[APIRoute]:
    from responder.web import api as api_module

    return [r for r in api_module.router.routes if isinstance(r, APIRoute)]


def _seed(api: Api) -> None:
    for address in ("bob@example.com", "carol@example.org"):
        api.ok("PUT", f"/api/v1/vacations/{address}", api.admin, {"message": f"secret of {address}"})
    for address in ("gone@example.org",):
        api.ok("PUT", f"/api/v1/retired/{address}", api.admin, {"message": "gone"})
    at = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    for recipient in ("bob@example.com", "carol@example.org"):
        api.store.record(DecisionRecord(at, "Q", "<m@x>", "x@example.net", recipient, "reply", None, ""))


def _snapshot(api: Api) -> Any:
    return (
        api.ok("GET", "/api/v1/vacations", api.admin),
        api.ok("GET", "/api/v1/retired", api.admin),
        api.ok("GET", "/api/v1/changes", api.admin),
        api.ok("GET", "/api/v1/templates/vacation.txt.j2", api.admin),
    )


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_a_foreign_address_is_refused_on_every_route(api: Api, caller: str, route: tuple[str, str]) -> None:
    _seed(api)
    before = _snapshot(api)
    foreign = CALLERS[caller]
    case = CASES[route]
    url, body = case.ask(foreign)
    answer = api.call(route[0], url, _who(api, caller), body)
    if case.kind == "refuse":
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
    else:
        assert answer.status_code in (200, 403), answer.text
        assert foreign not in answer.text
    assert _snapshot(api) == before


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_listings_show_nothing_foreign(api: Api, caller: str) -> None:
    _seed(api)
    foreign = CALLERS[caller]
    for url in LISTINGS:
        answer = api.call("GET", url, _who(api, caller))
        assert answer.status_code in (200, 400, 403), (url, answer.text)
        assert foreign not in answer.text, url
        assert "gone@example.org" not in answer.text, url


def test_an_alias_cannot_claim_a_foreign_address(api: Api) -> None:
    answer = api.call(
        "PUT",
        "/api/v1/vacations/alice@example.com",
        api.alice,
        {"message": "x", "aliases": ["bob@example.com"]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "aliases"


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize("method", ["VacationResponse/get", "VacationResponse/set"])
def test_a_foreign_jmap_account_is_not_found(api: Api, caller: str, method: str) -> None:
    _seed(api)
    before = _snapshot(api)
    foreign = account_id(CALLERS[caller])
    arguments: dict[str, Any] = {"accountId": foreign}
    if method.endswith("set"):
        arguments["update"] = {"singleton": {"isEnabled": False, "textBody": "pwned"}}
    body = {
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:vacationresponse"],
        "methodCalls": [[method, arguments, "0"]],
    }
    answer = api.client.post("/jmap/api", headers=_who(api, caller), json=body)
    assert answer.status_code == 200
    assert answer.json()["methodResponses"] == [["error", {"type": "accountNotFound"}, "0"]]
    session = api.client.get("/.well-known/jmap", headers=_who(api, caller)).json()
    assert foreign not in session["accounts"]
    assert _snapshot(api) == before
