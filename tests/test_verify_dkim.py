"""The DKIM route of the verification gate: messages signed here with fresh keys, real DNS on loopback."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dkim
import dkim.canonicalization
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from responder.config.settings import VerifySettings
from responder.verify.dkim import body_hash
from responder.verify.sender import Verification
from tests.dnsserver import DNSServer
from tests.verifying import verify

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe numbers are attached.\r\n"
)
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def from_(message: bytes, address: str) -> bytes:
    """``message`` with another From mailbox (before signing)."""
    return message.replace(b"<alice@example.com>", f"<{address}>".encode(), 1)


@dataclass(frozen=True)
class Key:
    pem: bytes
    record: str


def _key(private: rsa.RSAPrivateKey) -> Key:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")


def _probable_prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        odd, twos = candidate - 1, 0
        while odd % 2 == 0:
            odd, twos = odd // 2, twos + 1
        for _ in range(32):  # Miller-Rabin
            x = pow(secrets.randbelow(candidate - 3) + 2, odd, candidate)
            if x in (1, candidate - 1):
                continue
            for _ in range(twos - 1):
                x = pow(x, 2, candidate)
                if x == candidate - 1:
                    break
            else:
                break
        else:
            return candidate


def weak_key(bits: int = 512) -> Key:
    """An RSA key too short for RFC 8301; cryptography refuses to generate one, so build it."""
    exponent = 65537
    while True:
        p, q = _probable_prime(bits // 2), _probable_prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(exponent, phi) == 1 and (p * q).bit_length() == bits:
            break
    d = pow(exponent, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(exponent, p * q),
    )  # fmt: skip
    return _key(numbers.private_key())


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 128 else bytes([0x80 | ((size.bit_length() + 7) // 8)])
    if size >= 128:
        length += size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def public_key_record(modulus: int, exponent: int) -> str:
    """A key record for any (modulus, exponent), including ones no library would generate."""

    def integer(value: int) -> bytes:
        return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    der = _der(0x30, integer(modulus) + integer(exponent))  # PKCS#1 RSAPublicKey
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@dataclass(frozen=True)
class Keys:
    main: Key
    other: Key
    weak: Key


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        main=_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        other=_key(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        weak=weak_key(),
    )


@pytest.fixture(scope="module")
def server(keys: Keys) -> Iterator[DNSServer]:
    with DNSServer() as running:
        for domain in (
            "example.com",
            "mail.example.com",
            "co.uk",
            "bob.github.io",
            "slow.example",
            "fwd.example",
        ):
            running.add_txt(f"sel._domainkey.{domain}", keys.main.record)
        running.add_txt("sha1._domainkey.example.com", keys.main.record)
        running.add_txt("sel._domainkey.esp.example", keys.other.record)
        running.add_txt("weak._domainkey.example.com", keys.weak.record)
        running.add_txt("bad._domainkey.example.com", "v=DKIM1; k=rsa; p=AAAAB3NzaC1yc2E")
        running.add_txt("revoked._domainkey.example.com", "v=DKIM1; k=rsa; p=")
        running.add_txt(
            "padded._domainkey.example.com", keys.main.record.replace("k=rsa;", f"n={'x' * 1500};")
        )
        odd = (1 << 2047) | secrets.randbits(2046) << 1 | 1
        running.add_txt("huge._domainkey.example.com", public_key_record((1 << 16383) | 1, 65537))
        running.add_txt("exponent._domainkey.example.com", public_key_record(odd, (1 << 4000) + 1))
        running.add_txt("padding._domainkey.example.com", f"n={'x' * 9000}; " + keys.main.record)
        running.add_txt("example.net", "v=spf1 ~all")
        running.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        running.silence("slow.example")
        running.fail("broken.example")
        yield running
        assert not running.errors


def sign(
    message: bytes,
    domain: str,
    key: Key,
    selector: str = "sel",
    algorithm: bytes = b"rsa-sha256",
    headers: list[bytes] | None = None,
) -> bytes:
    """``message`` with one more DKIM-Signature on top, as a signing MTA would add it."""
    field = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.pem,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=headers or SIGNED_HEADERS,
    )
    return bytes(field) + message


def sign_without_from(message: bytes, domain: str, key: Key) -> bytes:
    """A valid signature whose h= leaves out From; dkimpy's signer refuses that, so assemble it."""
    signer = dkim.DKIM(message)
    signer.hasher = hashlib.sha256
    policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    included = (b"to", b"subject", b"date")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode()),
        (b"s", b"sel"),
        (b"t", str(int(time.time())).encode()),
        (b"h", b" : ".join(included)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),
    ]
    private = dkim.crypto.parse_pem_private_key(key.pem)
    value = signer.gen_header(fields, included, policy, b"DKIM-Signature", private)
    return b"DKIM-Signature: " + bytes(value) + message


def settings(server: DNSServer, require: str = "dkim", **overrides: float | str) -> VerifySettings:
    values: dict[str, float | str] = {"dns_timeout": 0.3, "budget": 3.0, **overrides}
    return VerifySettings(require=require, dns_servers=(server.address,), **values)  # type: ignore[arg-type]


Build = Callable[[Keys], bytes]

CASES: list[tuple[str, str, Build, bool, str]] = [
    (
        "strict",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main),
        True,
        "dkim=pass(d=example.com)",
    ),
    (
        "relaxed-subdomain-signer",
        "alice@example.com",
        lambda k: sign(MESSAGE, "mail.example.com", k.main),
        True,
        "dkim=pass(d=mail.example.com)",
    ),
    (
        "relaxed-subdomain-sender",
        "alice@lists.example.com",
        lambda k: sign(from_(MESSAGE, "alice@lists.example.com"), "example.com", k.main),
        True,
        "dkim=pass(d=example.com)",
    ),
    (
        "other-organization",
        "alice@example.com",
        lambda k: sign(MESSAGE, "esp.example", k.other),
        False,
        "dkim=pass(d=esp.example, not aligned)",
    ),
    (
        "private-psl-entry-is-its-own-organization",
        "bounce@alice.github.io",
        lambda k: sign(MESSAGE, "bob.github.io", k.main),
        False,
        "dkim=pass(d=bob.github.io, not aligned)",
    ),
    (
        "signer-is-a-public-suffix",
        "bounce@example.co.uk",
        lambda k: sign(MESSAGE, "co.uk", k.main),
        False,
        "dkim=policy(d=co.uk, public suffix)",
    ),
    (
        "body-modified",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main).replace(b"attached", b"not attached"),
        False,
        "dkim=fail(d=example.com, body hash mismatch)",
    ),
    (
        "signed-header-modified",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main).replace(b"quarterly", b"urgent"),
        False,
        "dkim=fail(d=example.com, signature mismatch)",
    ),
    (
        "missing-key",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="nokey"),
        False,
        "dkim=permerror(d=example.com, no key)",
    ),
    (
        "unparseable-key",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="bad"),
        False,
        "dkim=permerror(d=example.com, bad key)",
    ),
    (
        "revoked-key",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="revoked"),
        False,
        "dkim=permerror(d=example.com, bad key)",
    ),
    (
        "key-from-a-truncated-udp-answer",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="padded"),
        True,
        "dkim=pass(d=example.com)",
    ),
    (
        "only-second-signature-aligned",
        "alice@example.com",
        lambda k: sign(sign(MESSAGE, "example.com", k.main), "esp.example", k.other),
        True,
        "dkim=pass(d=example.com)",
    ),
    (
        "first-aligned-broken-second-good",
        "alice@example.com",
        lambda k: sign(sign(MESSAGE, "mail.example.com", k.main), "example.com", k.main, selector="nokey"),
        True,
        "dkim=permerror(d=example.com, no key) dkim=pass(d=mail.example.com)",
    ),
    (
        "rsa-sha1",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="sha1", algorithm=b"rsa-sha1"),
        False,
        "dkim=policy(d=example.com, rsa-sha1)",
    ),
    (
        "512-bit-key",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.weak, selector="weak"),
        False,
        "dkim=policy(d=example.com, key 512 bits)",
    ),
    (
        "from-not-signed",
        "alice@example.com",
        lambda k: sign_without_from(MESSAGE, "example.com", k.main),
        False,
        "dkim=policy(d=example.com, From not signed)",
    ),
    (
        "key-too-large-to-be-worth-it",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="huge"),
        False,
        "dkim=policy(d=example.com, key 16384 bits)",
    ),
    (
        "absurd-exponent",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="exponent"),
        False,
        "dkim=policy(d=example.com, RSA exponent too large)",
    ),
    (
        "key-record-too-large",
        "alice@example.com",
        lambda k: sign(MESSAGE, "example.com", k.main, selector="padding"),
        False,
        "dkim=policy(d=example.com, key record too large)",
    ),
    (
        "dns-timeout-is-not-a-failure",
        "alice@slow.example",
        lambda k: sign(from_(MESSAGE, "alice@slow.example"), "slow.example", k.main),
        False,
        "dkim=temperror(d=slow.example, timeout)",
    ),
    (
        "dns-servfail-is-not-a-failure",
        "alice@broken.example",
        lambda k: sign(from_(MESSAGE, "alice@broken.example"), "broken.example", k.main),
        False,
        "dkim=temperror(d=broken.example, servfail)",
    ),
    (
        "unsigned",
        "alice@example.com",
        lambda k: MESSAGE,
        False,
        "dkim=none",
    ),
    (
        "malformed-signature",
        "alice@example.com",
        lambda k: b"DKIM-Signature: v=1; a=rsa-sha256; d=; b=\r\n" + MESSAGE,
        False,
        "dkim=permerror(malformed signature)",
    ),
    (
        "lf-line-endings",
        "alice@example.com",
        lambda k: sign(MESSAGE.replace(b"\r\n", b"\n"), "example.com", k.main),
        True,
        "dkim=pass(d=example.com)",
    ),
]


@pytest.mark.parametrize(
    ("sender", "build", "verified", "summary"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_dkim_results(
    server: DNSServer, keys: Keys, sender: str, build: Build, verified: bool, summary: str
) -> None:
    result = verify(build(keys), sender, None, None, settings(server))
    assert result == Verification(verified, summary)


def test_from_unsigned_signature_is_otherwise_valid(server: DNSServer, keys: Keys) -> None:
    # Proves the refusal above comes from the From rule, not from a broken test signature.
    message = sign_without_from(MESSAGE, "example.com", keys.main)
    record = keys.main.record.encode()
    assert dkim.DKIM(message).verify(dnsfunc=lambda name, timeout=5: record)


def test_weak_key_signature_is_otherwise_valid(keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.weak, selector="weak")
    record = keys.weak.record.encode()
    assert dkim.DKIM(message, minkey=512).verify(dnsfunc=lambda name, timeout=5: record)


def test_policy_refusals_cost_no_dns(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.main, selector="sha1", algorithm=b"rsa-sha1")
    assert not verify(message, "alice@example.com", None, None, settings(server)).verified
    assert not server.queried("sha1._domainkey.example.com")


def test_key_too_long_for_udp_came_over_tcp(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.main, selector="padded")
    assert verify(message, "alice@example.com", None, None, settings(server)).verified
    assert "tcp" in {q.transport for q in server.queried("padded._domainkey.example.com")}


def test_readme_example_summary(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "esp.example", keys.other)
    result = verify(message, "bounce@example.net", "192.0.2.1", None, settings(server, "aligned"))
    assert result == Verification(False, "spf=softfail dkim=pass(d=esp.example, not aligned)")


def test_aligned_mode_dkim_rescues_spf_fail(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.main)
    result = verify(message, "alice@example.com", "198.51.100.1", None, settings(server, "aligned"))
    assert result == Verification(True, "spf=fail dkim=pass(d=example.com)")


def test_aligned_mode_stops_at_spf_pass(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.main, selector="untouched")
    result = verify(message, "alice@example.com", "192.0.2.1", None, settings(server, "aligned"))
    assert result == Verification(True, "spf=pass")
    assert not server.queried("untouched._domainkey.example.com")


def test_spf_mode_ignores_dkim(server: DNSServer, keys: Keys) -> None:
    message = sign(MESSAGE, "example.com", keys.main)
    result = verify(message, "alice@example.com", None, None, settings(server, "spf"))
    assert result == Verification(False, "spf=skipped(no client address)")


def test_signature_count_is_limited(server: DNSServer, keys: Keys) -> None:
    message = MESSAGE
    for number in range(8):
        message = sign(message, "example.com", keys.main, selector=f"none{number}")
    result = verify(message, "alice@example.com", None, None, settings(server))
    assert not result.verified
    assert result.summary.count("no key") == 5
    assert result.summary.count("dkim=unchecked(d=example.com, limit)") == 3


def test_long_whitespace_runs_are_cheap(server: DNSServer, keys: Keys) -> None:
    # dkimpy's own relaxed body canonicalization needs over a minute for this body.
    body = (b" " * 997 + b"x\r\n") * 2000 + b"\t" * 300_000 + b"end\r\n"
    message = sign(MESSAGE + body, "example.com", keys.main)
    started = time.monotonic()
    result = verify(message, "alice@example.com", None, None, settings(server))
    assert time.monotonic() - started < 2.0
    assert result == Verification(True, "dkim=pass(d=example.com)")


# --- the signed From names the envelope sender ----------------------------------------------------

REPLAYED = [
    # id, envelope sender, From of the signed message, verified, summary
    ("from-is-the-sender", "alice@example.com", "alice@example.com", True, "dkim=pass(d=example.com)"),
    ("case-folded", "ALICE@Example.COM", "Alice@example.com", True, "dkim=pass(d=example.com)"),
    (
        "batv-sender",
        "prvs=1234abcdef=alice@example.com",
        "alice@example.com",
        True,
        "dkim=pass(d=example.com)",
    ),
    ("quoted-sender", '"alice"@example.com', "alice@example.com", True, "dkim=pass(d=example.com)"),
    (
        "another-mailbox-of-the-domain",
        "dave@example.com",
        "carol@example.com",
        False,
        "dkim=policy(d=example.com, From is not the sender)",
    ),
    (
        "sub-address-is-another-mailbox",
        "alice+x@example.com",
        "alice@example.com",
        False,
        "dkim=policy(d=example.com, From is not the sender)",
    ),
]


@pytest.mark.parametrize(
    ("sender", "author", "verified", "summary"), [r[1:] for r in REPLAYED], ids=[r[0] for r in REPLAYED]
)
def test_a_signature_verifies_the_mailbox_it_signed(
    server: DNSServer, keys: Keys, sender: str, author: str, verified: bool, summary: str
) -> None:
    message = sign(from_(MESSAGE, author), "example.com", keys.main)
    assert verify(message, sender, None, None, settings(server)) == Verification(verified, summary)


def test_a_replayed_signature_costs_no_key_lookup(server: DNSServer, keys: Keys) -> None:
    message = sign(from_(MESSAGE, "carol@example.com"), "example.com", keys.main, selector="replayed")
    assert not verify(message, "dave@example.com", None, None, settings(server)).verified
    assert not server.queried("replayed._domainkey.example.com")


def test_srs_sender_is_the_original_author(server: DNSServer, keys: Keys) -> None:
    # The forwarder signs with its own domain; the envelope sender is its SRS address.
    message = sign(MESSAGE, "fwd.example", keys.main)
    sender = "SRS0=HHH=TT=example.com=alice@fwd.example"
    assert verify(message, sender, None, None, settings(server)) == Verification(
        True, "dkim=pass(d=fwd.example)"
    )


def test_a_second_from_field_is_refused(server: DNSServer, keys: Keys) -> None:
    message = b"From: alice@example.com\r\n" + sign(MESSAGE, "example.com", keys.main)
    assert verify(message, "alice@example.com", None, None, settings(server)) == Verification(
        False, "dkim=policy(d=example.com, 2 From fields)"
    )


def test_domain_identity_lets_any_mailbox_of_the_domain_through(server: DNSServer, keys: Keys) -> None:
    message = sign(from_(MESSAGE, "carol@example.com"), "example.com", keys.main)
    result = verify(message, "dave@example.com", None, None, settings(server, dkim_identity="domain"))
    assert result == Verification(True, "dkim=pass(d=example.com)")


# --- the body hash, streamed -----------------------------------------------------------------------


def test_streamed_body_hash_is_dkimpys() -> None:
    # Every canonicalization, l= and slice size (down to one byte) against dkimpy's whole-body steps.
    noise = random.Random(6376)
    pieces = [b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n", b"\n\n", b"  \r\n", b"\r\r\n"]
    for _ in range(3000):
        body = b"".join(noise.choice(pieces) for _ in range(noise.randrange(0, 30)))
        head = noise.choice([b"From: a@example.com\r\n\r\n", b"From: a@example.com\n\n"])
        raw = head + body
        _headers, whole = dkim.rfc822_parse(raw)
        for c in (b"simple/simple", b"relaxed/relaxed", b"simple/relaxed", b"relaxed/simple"):
            tags = {b"a": b"rsa-sha256", b"c": c}
            canonical = dkim.canonicalization.CanonicalizationPolicy.from_c_value(c).canonicalize_body(whole)
            if noise.random() < 0.3:
                tags[b"l"] = str(noise.randrange(0, 40)).encode()
                canonical = canonical[: int(tags[b"l"])]
            expected = hashlib.sha256(canonical).digest()
            for piece in (1, 2, 3, 7, 1 << 20):
                assert body_hash(raw, len(head), tags, piece) == expected, (raw, tags, piece)


def test_body_length_tag_ignores_what_was_appended(server: DNSServer, keys: Keys) -> None:
    field = dkim.sign(MESSAGE, b"sel", b"example.com", keys.main.pem, canonicalize=(b"relaxed", b"relaxed"),
                      include_headers=SIGNED_HEADERS, length=True)  # fmt: skip
    message = bytes(field) + MESSAGE + b"-- \r\nappended by a list\r\n"
    result = verify(message, "alice@example.com", None, None, settings(server))
    assert result == Verification(True, "dkim=pass(d=example.com)")
