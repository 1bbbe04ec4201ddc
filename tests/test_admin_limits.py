"""`responder purge` and `responder limits show|reset`, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from responder.cli.main import main
from responder.config.values import Limit
from responder.decide.limits import window
from responder.store.database import CounterWindow, DecisionRecord, Store
from responder.store.schema import decisions, rate_counters, reply_claims
from tests.conftest import ConfigFactory


@pytest.fixture
def db_url(backend_url: str) -> str:
    return backend_url


def _run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args], stdin=None)
    out, err = capsys.readouterr()
    return code, out, err


def _rows(store: Store, table: object) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _count(store: Store, scope: str, key: str, limit: Limit, now: dt.datetime) -> None:
    assert store.take_counts([(CounterWindow(scope, key, *window(limit, now)), limit.count)]) is None


def _audit(at: dt.datetime) -> DecisionRecord:
    return DecisionRecord(at, "Q", "<m>", "bob@example.org", "alice@example.com", "reply", None, "")


def test_purge(make_config: ConfigFactory, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config()
    now = dt.datetime.now(dt.UTC)
    store.put_vacation("alice@example.com", now, None, enabled=True, message="away", timezone="UTC")
    vacation = store.vacation_for(["alice@example.com"])
    assert vacation is not None
    with store.engine.begin() as conn:
        for age, sender in ((61, "old@example.org"), (59, "recent@example.org")):
            conn.execute(
                insert(reply_claims).values(
                    vacation_id=vacation.id,
                    sender_key=sender,
                    replied_at=now - dt.timedelta(days=age),
                    message_key="k",
                    state="sent",
                    token="t",
                )
            )
    hour = Limit(5, 3600)
    _count(store, "sender", "bob@example.org", hour, now - dt.timedelta(hours=1))
    _count(store, "sender", "bob@example.org", hour, now)
    for age in (91, 89, 2):
        store.record(
            DecisionRecord(
                now - dt.timedelta(days=age), "Q", "<m>", "b@x.org", "alice@example.com", "reply", None, ""
            )
        )

    code, out, _err = _run(config, capsys, "purge")
    assert code == 0
    assert out == (
        "purged 1 reply claims older than 60d, 1 closed rate-limit windows, 1 audit rows older than 90d\n"
    )
    assert (_rows(store, reply_claims), _rows(store, rate_counters), _rows(store, decisions)) == (1, 1, 2)
    code, out, _err = _run(config, capsys, "purge", "--older-than", "1d")
    assert code == 0
    assert out.endswith("2 audit rows older than 1d\n")
    assert _rows(store, decisions) == 0

    retained = make_config(store={"audit_retention": "12h"})
    store.record(
        DecisionRecord(now - dt.timedelta(days=1), "Q", "<m>", "b@x.org", "a@x.org", "reply", None, "")
    )
    assert _run(retained, capsys, "purge")[1].endswith("1 audit rows older than 12h\n")
    code, _out, err = _run(config, capsys, "purge", "--older-than", "soon")
    assert (code, err) == (1, "responder: --older-than: not a duration (use e.g. 30s, 12h, 7d): 'soon'\n")


def test_limits_show_and_reset(
    make_config: ConfigFactory, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(limits={"per_sender": "3/1d", "per_sender_domain": "off"})
    now = dt.datetime.now(dt.UTC)
    day, hour = Limit(3, 86400), Limit(1000, 3600)
    for _ in range(3):
        _count(store, "sender", "bob@example.org", day, now)
    _count(store, "sender", "carol@example.org", day, now)
    _count(store, "sender-domain", "example.org", hour, now)
    _count(store, "recipient", "alice@example.com", hour, now)
    _count(store, "global", "*", hour, now)

    # Any spelling of the sender finds its key; its domain and the global counter come along.
    code, out, _err = _run(config, capsys, "limits", "show", "--sender", "prvs=0123abcdef=Bob+x@Example.org")
    assert code == 0
    heading, *lines = out.splitlines()
    assert heading.split() == ["SCOPE", "KEY", "COUNT/LIMIT", "WINDOW", "(UTC)", "REACHED"]
    assert [line.split()[:3] for line in lines] == [
        ["global", "*", "1/1000"],
        ["sender", "bob@example.org", "3/3"],
        ["sender-domain", "example.org", "1/off"],
    ]
    assert lines[1].endswith("reached")
    code, out, _err = _run(config, capsys, "limits", "show", "--json")
    shown = json.loads(out)
    assert {(c["scope"], c["key"], c["count"], c["limit"]) for c in shown} == {
        ("global", "*", 1, "1000/1h"),
        ("recipient", "alice@example.com", 1, "200/1h"),
        ("sender", "bob@example.org", 3, "3/1d"),
        ("sender", "carol@example.org", 1, "3/1d"),
        ("sender-domain", "example.org", 1, "off"),
    }
    code, out, _err = _run(config, capsys, "limits", "show", "--recipient", "nobody@example.com")
    assert out.splitlines()[1:] == [line for line in out.splitlines() if line.startswith("global")]

    assert _run(config, capsys, "limits", "reset", "--sender", "BOB+y@example.org")[1] == (
        "reset 1 rate-limit counters\n"
    )
    remaining = json.loads(_run(config, capsys, "limits", "show", "--json")[1])
    assert ("sender", "bob@example.org") not in {(c["scope"], c["key"]) for c in remaining}
    assert _run(config, capsys, "limits", "reset", "--recipient", "alice@example.com", "--global")[1] == (
        "reset 2 rate-limit counters\n"
    )
    code, _out, err = _run(config, capsys, "limits", "reset")
    assert code == 1
    assert "say what to reset" in err
    assert _run(config, capsys, "limits", "reset", "--all")[1] == "reset 2 rate-limit counters\n"
    assert (
        _run(config, capsys, "limits", "show")[1] == "no responses counted in the open windows for any key\n"
    )
