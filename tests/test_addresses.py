"""Sender keys: every spelling of one mailbox counts against the same intervals and limits."""

from __future__ import annotations

import pytest

from responder.mail.addresses import routing_operator, sender_domain, sender_key

CASES = [
    # (envelope sender as given, key)
    ("bob@example.org", "bob@example.org"),
    # upper case: the whole address is compared case-insensitively
    ("Bob@EXAMPLE.ORG", "bob@example.org"),
    ("BOB@Example.Org.", "bob@example.org"),
    # BATV (draft-levine-smtp-batv) and its vendor spellings
    ("prvs=1234abcdef=bob@example.org", "bob@example.org"),
    ("PRVS=0017ABCDEF=Bob@Example.org", "bob@example.org"),
    ("msprvs1=19dfd3ba6lnz=bob@example.org", "bob@example.org"),
    ("btv1==0123abcd==bob@example.org", "bob@example.org"),
    # SRS0: keyed by the original sender, hash and timestamp ignored
    ("SRS0=HHH=TT=example.org=bob@forwarder.example", "bob@example.org"),
    ("SRS0=a1B2=Zq=Example.ORG=Bob@forwarder.example", "bob@example.org"),
    ("srs0+HHH=TT=example.org=bob@forwarder.example", "bob@example.org"),
    ("SRS0-HHH=TT=example.org=bob@forwarder.example", "bob@example.org"),
    ("SRS0=HHH=TT=example.org=a=b@forwarder.example", "a=b@example.org"),
    # SRS1: a second forwarder; still the original sender
    ("SRS1=HHH=forwarder.example==HHH=TT=example.org=bob@second.example", "bob@example.org"),
    ("SRS1=XyZ=forwarder.example=+HHH=TT=example.org=bob@second.example", "bob@example.org"),
    # SRS around BATV and +tag
    ("SRS0=HHH=TT=example.org=prvs=1234abcdef=bob@forwarder.example", "bob@example.org"),
    ("SRS0=HHH=TT=example.org=bob+news@forwarder.example", "bob@example.org"),
    # +tag sub-address extension
    ("bob+tag@example.org", "bob@example.org"),
    ("bob+a+b@example.org", "bob@example.org"),
    ("prvs=1234abcdef=bob+tag@example.org", "bob@example.org"),
    # IDN domains: IDNA, lower case, either spelling
    ("bob@bücher.example", "bob@xn--bcher-kva.example"),
    ("bob@BÜCHER.example", "bob@xn--bcher-kva.example"),
    ("bob@XN--BCHER-KVA.example", "bob@xn--bcher-kva.example"),
    ("SRS0=HHH=TT=bücher.example=bob@forwarder.example", "bob@xn--bcher-kva.example"),
    # quoted local parts that say what a dot-atom says are that dot-atom (RFC 5321 section 4.1.2)
    ('"bob"@example.org', "bob@example.org"),
    ('"Bob"@Example.org', "bob@example.org"),
    ('"b\\ob"@example.org', "bob@example.org"),
    ('"bob+tag"@example.org', "bob@example.org"),
    ('"prvs=1234abcdef=bob"@example.org', "bob@example.org"),
    # not what they look like: kept whole
    ('"bob smith"@example.org', '"bob smith"@example.org'),
    ('"bob..smith"@example.org', '"bob..smith"@example.org'),
    ("+tag@example.org", "+tag@example.org"),
    ("srs0=broken@forwarder.example", "srs0=broken@forwarder.example"),
    ("prvs@example.org", "prvs@example.org"),
    ("bob-tag@example.org", "bob-tag@example.org"),
]


@pytest.mark.parametrize(("address", "key"), CASES)
def test_sender_key(address: str, key: str) -> None:
    assert sender_key(address) == key


def test_sender_domain_is_the_key_domain() -> None:
    assert sender_domain(sender_key("SRS0=HHH=TT=Example.ORG=bob@forwarder.example")) == "example.org"


@pytest.mark.parametrize(
    ("address", "operator"),
    [
        ('"victim@victim.example"@mx.example.net', "@ in the local part"),
        ('"victim\\@victim.example"@mx.example.net', "@ in the local part"),
        ("victim%victim.example@mx.example.net", "% in the local part"),
        ('"victim%victim.example"@mx.example.net', "% in the local part"),
        ("victim.example!victim@mx.example.net", "! in the local part"),
        ("<@mx.example.net:victim@victim.example>", "@ in the local part"),
        ("bob@example.org", None),
        ('"bob"@example.org', None),
        ("bob@ex%ample.org", None),
        ("no-at-sign", None),
    ],
)
def test_routing_operator(address: str, operator: str | None) -> None:
    assert routing_operator(address) == operator
