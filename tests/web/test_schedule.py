"""Schedule values of the forms: wall times in a zone, durations and instants in words."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from responder.web.schedule import (
    FieldError,
    interval_sentence,
    parse_local,
    spoken_duration,
    spoken_time,
    zone,
    zone_names,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_every_iana_zone_is_offered_and_nothing_else() -> None:
    names = zone_names()
    assert {"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"} <= set(names)
    assert list(names) == sorted(names)
    with pytest.raises(FieldError) as caught:
        zone("Europe/Atlantis")
    assert caught.value.field == "timezone"
    with pytest.raises(FieldError):
        zone("../../etc/passwd")


def test_a_wall_time_is_read_in_its_zone() -> None:
    assert parse_local("2026-07-01T09:30", BERLIN, "start") == dt.datetime(2026, 7, 1, 7, 30, tzinfo=dt.UTC)
    assert parse_local("2026-12-01T09:30", BERLIN, "start") == dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)
    assert parse_local("2026-12-01", BERLIN, "start") == dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC)
    assert parse_local("  ", BERLIN, "start") is None


def test_a_wall_time_in_the_spring_gap_is_moved_past_it() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026; fold=0 reads it with the offset before the gap.
    assert parse_local("2026-03-29T02:30", BERLIN, "end") == dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize("text", ["tomorrow", "2026-02-30T10:00", "2026-12-01T10:00+01:00", "1900-01-01"])
def test_what_is_no_wall_time_names_the_field(text: str) -> None:
    with pytest.raises(FieldError) as caught:
        parse_local(text, BERLIN, "end")
    assert caught.value.field == "end"


def test_durations_and_instants_in_words() -> None:
    assert spoken_duration(7 * 86400) == "7 days"
    assert spoken_duration(86400 + 12 * 3600) == "1 day and 12 hours"
    assert spoken_duration(2 * 86400 + 3600 + 60) == "2 days, 1 hour and 1 minute"
    assert interval_sentence(7 * 86400) == "one reply per sender every 7 days"
    assert interval_sentence(86400) == "one reply per sender every day"
    instant = dt.datetime(2026, 12, 24, 16, 0, tzinfo=dt.UTC)
    assert spoken_time(instant, "Europe/Berlin") == "Thursday 24 December 2026, 17:00 (Europe/Berlin)"
    assert spoken_time(instant, "Asia/Tokyo") == "Friday 25 December 2026, 01:00 (Asia/Tokyo)"
