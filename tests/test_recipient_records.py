"""The look-up of every message on SQLite, PostgreSQL and MariaDB: a recipient's vacation and retirement."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from responder.decide.records import Translation
from responder.store.database import Store

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
ALICE, ALIAS, OLD, NOBODY = "alice@example.com", "a@example.com", "old@example.com", "nobody@example.com"
CAROL = "carol@example.com"


@pytest.fixture
def store(backend_url: str) -> Iterator[Store]:
    opened = Store.open(backend_url, busy_timeout=5)
    opened.put_vacation(
        ALICE,
        NOW,
        [ALIAS],
        [Translation("internal", "de", "Abwesend", "Bin weg.", None)],
        enabled=True,
        message="Away.",
        timezone="UTC",
    )
    opened.put_vacation(CAROL, NOW, None, enabled=True, message="Out.", timezone="UTC")
    assert opened.put_retirement(OLD, NOW, message="Old has left.", status="5.1.6", timezone="UTC")
    yield opened
    opened.close()


def _found(store: Store, *addresses: str) -> tuple[str | None, str | None]:
    vacation, retirement = store.recipient_records(addresses)
    return (vacation.address if vacation else None), (retirement.address if retirement else None)


def test_each_record_is_the_first_address_s_that_has_one(store: Store) -> None:
    assert _found(store, NOBODY) == (None, None)
    assert _found(store, ALICE) == (ALICE, None)
    assert _found(store, OLD) == (None, OLD)
    # The original recipient's, when the recipient has none; each kind on its own.
    assert _found(store, NOBODY, ALICE) == (ALICE, None)
    assert _found(store, ALICE, OLD) == (ALICE, OLD)
    assert _found(store, OLD, ALICE) == (ALICE, OLD)
    assert _found(store, "", ALICE) == (ALICE, None)
    assert (_found(store, CAROL, ALICE), _found(store, ALICE, CAROL)) == ((CAROL, None), (ALICE, None))
    assert _found(store, ALIAS) == (None, None)  # an alias is the vacation's to answer for, not a key
    assert store.recipient_records([]) == (None, None)


def test_the_records_are_whole_and_the_same_as_each_look_up_alone(store: Store) -> None:
    for addresses in ([ALICE], [OLD], [NOBODY, OLD], [ALICE, OLD, NOBODY]):
        assert store.recipient_records(addresses) == (
            store.vacation_for(addresses),
            store.retirement_for(addresses),
        )
    vacation, _ = store.recipient_records([ALICE])
    assert vacation is not None
    assert (vacation.aliases, [t.language for t in vacation.translations]) == ((ALIAS,), ["de"])
