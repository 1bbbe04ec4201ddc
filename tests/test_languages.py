"""Language tags, Accept-Language priority lists and RFC 4647 lookup; localised placeholders."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from responder.decide.content import fill, fill_html, placeholder_values, unknown_placeholders
from responder.decide.records import Vacation
from responder.mail.languages import content_languages, language_tag, lookup, priority_list


@pytest.mark.parametrize(
    ("given", "tag"),
    [
        ("de", "de"),
        ("DE-ch", "de-CH"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("sr-Latn-RS", "sr-Latn-RS"),
        ("es-419", "es-419"),
        ("de-CH-1996", "de-CH-1996"),
        ("en-US-u-ca-gregory", "en-US-u-ca-gregory"),
    ],
)
def test_well_formed_tags_are_taken_in_their_conventional_case(given: str, tag: str) -> None:
    assert language_tag(given) == tag


@pytest.mark.parametrize(
    "given", ["", "de_CH", "en-", "-en", "e", "en-toolongsubtag", "de-CH-x", "x-private"]
)
def test_ill_formed_tags_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="not a BCP 47 language tag"):
        language_tag(given)


@pytest.mark.parametrize("given", ["dee", "qq", "zz-DE"])
def test_unknown_languages_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="unknown language"):
        language_tag(given)


def test_accept_language_is_ordered_by_q_value_then_position() -> None:
    assert priority_list("da, en-gb;q=0.8, en;q=0.7") == ["da", "en-gb", "en"]
    assert priority_list("en;q=0.3, fr;q=0.9, de;q=0.5, it") == ["it", "fr", "de", "en"]
    assert priority_list("de;q=0, fr;q=0.001, *;q=0.1") == ["*", "fr"]
    assert priority_list("de;q=2, fr;q=abc, en;q=1.000, ;;, it;q=0.5") == ["en", "it"]


def test_content_language_is_a_list_of_tags() -> None:
    assert content_languages("fr, en-CA") == ["fr", "en-ca"]


def test_lookup_truncates_the_range_rfc_4647_section_3_4() -> None:
    tags = ["de", "de-CH", "en", "zh-Hant"]
    assert lookup(["de-CH-1996"], tags) == ("de-CH", "de-CH-1996")
    assert lookup(["de-AT"], tags) == ("de", "de-AT")
    # "zh-Hant-CN-x-private1-private2": the singleton left at the end goes with the subtag after it.
    assert lookup(["zh-Hant-CN-x-private1-private2"], tags) == ("zh-Hant", "zh-Hant-CN-x-private1-private2")
    assert lookup(["fr-FR", "en-GB"], tags) == ("en", "en-GB")
    # A range is never widened: "zh" does not find zh-Hant, and "*" is ignored.
    assert lookup(["zh", "*"], tags) is None


def _vacation(**changes: object) -> Vacation:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    base = Vacation(
        id=1,
        address="alice@example.com",
        enabled=True,
        message="",
        subject=None,
        from_header='"Alice Example" <alice@example.com>',
        template=None,
        starts_at=dt.datetime(2026, 12, 21, 8, 0, tzinfo=dt.UTC),
        ends_at=dt.datetime(2027, 1, 4, 8, 0, tzinfo=dt.UTC),
        timezone="Europe/Berlin",
        interval_seconds=None,
        aliases=(),
        created_at=now,
        updated_at=now,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_placeholders_in_the_zone_and_the_language_of_the_reply() -> None:
    english = placeholder_values(_vacation(), "en", "Lunch?")
    german = placeholder_values(_vacation(), "de", "Lunch?")
    assert english["name"] == "Alice Example" and english["subject"] == "Lunch?"
    assert (english["start"], english["end"]) == ("2026-12-21 09:00", "2027-01-04 09:00")
    assert english["end_date"] == "Monday, January 4, 2027"
    assert german["end_date"] == "Montag, 4. Januar 2027"
    assert german["end_long"].startswith("Montag, 4. Januar 2027") and "09:00" in german["end_long"]
    assert placeholder_values(_vacation(ends_at=None), "en", "")["end_long"] == ""


def test_placeholders_are_filled_and_escaped_in_html() -> None:
    values = {"name": "A <b>&", "subject": "x"}
    assert fill("Hi {{ name }}, {{subject}} {{ other }}", values) == "Hi A <b>&, x {{ other }}"
    assert fill_html("<p>{{ name }}</p>", values) == "<p>A &lt;b&gt;&amp;</p>"
    assert unknown_placeholders("{{ name }} {{ nmae }} {{end_long}}") == ["nmae"]
