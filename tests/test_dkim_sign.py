"""Responses DKIM-signed as their From domain, as received by the loopback sink and checked by verifiers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ConfigFactory
from tests.dkimtools import (
    DOMAIN,
    ED_SELECTOR,
    RSA_SELECTOR,
    dmarc_passes,
    keygen,
    only_signature,
    publish,
    signatures,
    verify_each,
)
from tests.dnsserver import DNSServer
from tests.helpers import deliver_args, run_admin, run_hook, sample, vacation_set
from tests.opendkim import TESTMSG, missing, run_opendkim
from tests.sink import SmtpSink

SENDER = "bob@example.org"
RCPT = "alice@example.com"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dkim"
    path.mkdir(mode=0o700)
    return path


def _dkim_config(make_config: ConfigFactory, keys_dir: Path, server: DNSServer, **dkim: object) -> Path:
    return make_config(
        dkim={"keys_dir": str(keys_dir), **dkim},
        verify={"require": "off", "dns_servers": [server.address], "dns_timeout": 2},
    )


def _deliver(config: Path, raw: bytes | None = None, recipient: str = RCPT, sender: str = SENDER) -> str:
    result = run_hook(
        config, *deliver_args(sender, recipient, queue_id="4DK"), stdin=raw or sample("personal.eml")
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def _audit(config: Path) -> list[dict[str, object]]:
    result = run_admin(config, "log", "--json")
    assert result.returncode == 0, result.stderr.decode()
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def _opendkim(data: bytes, server: DNSServer, *selectors: str) -> int:
    """opendkim-testmsg's exit status for ``data``, with the loopback's key records as its DNS."""
    reason = missing()
    if reason is not None:
        if os.environ.get("RESPONDER_TEST_INTEGRATION") == "require":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    lookup = {f"{s}._domainkey.{DOMAIN}": [_txt(server, s)] for s in selectors}
    result = run_opendkim([TESTMSG], lookup, data)
    assert result.returncode == 0 or "Bad signature" in result.stderr or result.stderr, result
    return result.returncode


def _txt(server: DNSServer, selector: str) -> str:
    from tests.dkimtools import dnsfunc

    text = dnsfunc(server)(f"{selector}._domainkey.{DOMAIN}.".encode())
    assert text is not None
    return text.decode()


@pytest.fixture
def signed_reply(make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink) -> bytes:
    """A vacation reply signed with RSA 2048 and ed25519, as the sink received it."""
    config = _dkim_config(make_config, keys_dir, dns_server, ed25519=True)
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    publish(dns_server, ED_SELECTOR, keygen(config, DOMAIN, "--algorithm", "ed25519"))
    dns_server.add_txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject; adkim=s")
    vacation_set(config, RCPT, "--message", "Ich bin bis Montag weg. Grüße, Alice")
    _deliver(config)
    [received] = sink.wait_for(1)
    return received.data


def test_the_reply_carries_rsa_then_ed25519_signatures_by_the_from_domain(signed_reply: bytes) -> None:
    rsa, ed = signatures(signed_reply)
    assert (rsa[b"a"], rsa[b"d"], rsa[b"s"], rsa[b"c"]) == (
        b"rsa-sha256",
        DOMAIN.encode(),
        RSA_SELECTOR.encode(),
        b"relaxed/relaxed",
    )
    assert (ed[b"a"], ed[b"d"], ed[b"s"]) == (b"ed25519-sha256", DOMAIN.encode(), ED_SELECTOR.encode())
    signed = [h.strip() for h in rsa[b"h"].split(b":")]
    # Oversigned: each of these is listed once more than it occurs, so none can be added in transit.
    for name in (b"from", b"subject", b"to", b"date", b"message-id", b"auto-submitted"):
        assert signed.count(name) == 2, (name, signed)
    assert signed.count(b"in-reply-to") == 1


def test_dkimpy_verifies_both_signatures_and_dmarc_passes(signed_reply: bytes, dns_server: DNSServer) -> None:
    assert verify_each(signed_reply, dns_server) == [True, True]
    assert dmarc_passes(signed_reply, dns_server, DOMAIN, DOMAIN)


def test_opendkim_verifies_each_signature_alone(signed_reply: bytes, dns_server: DNSServer) -> None:
    # OpenDKIM 2.11 verifies ed25519-sha256 too (RFC 8463); each signature is checked on its own.
    assert _opendkim(only_signature(signed_reply, 0), dns_server, RSA_SELECTOR) == 0
    assert _opendkim(only_signature(signed_reply, 1), dns_server, ED_SELECTOR) == 0


def test_a_tampered_body_fails_both_verifiers(signed_reply: bytes, dns_server: DNSServer) -> None:
    head, _, body = signed_reply.partition(b"\r\n\r\n")
    assert b"Montag" in body
    tampered = head + b"\r\n\r\n" + body.replace(b"Montag", b"Freitag")
    assert verify_each(tampered, dns_server) == [False, False]
    assert not dmarc_passes(tampered, dns_server, DOMAIN, DOMAIN)
    assert _opendkim(only_signature(tampered, 0), dns_server, RSA_SELECTOR) != 0
    assert _opendkim(only_signature(tampered, 1), dns_server, ED_SELECTOR) != 0


def test_an_added_subject_breaks_the_oversigned_signature(signed_reply: bytes, dns_server: DNSServer) -> None:
    added = b"Subject: something else\r\n" + signed_reply
    assert verify_each(added, dns_server) == [False, False]


def test_the_body_is_seven_bit_so_relays_do_not_convert_it(signed_reply: bytes) -> None:
    from email import message_from_bytes, policy

    assert signed_reply.isascii()
    message = message_from_bytes(signed_reply, policy=policy.default)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Grüße" in message.get_content()


@pytest.mark.parametrize("adkim", ["r", "s"])
def test_a_subdomain_from_is_signed_as_itself_and_aligns_strictly(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink, adkim: str
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server)
    # Signed as mail.example.com (the From domain), so even the organizational domain's strict
    # policy (found there, RFC 7489 6.6.3) is met.
    publish(dns_server, RSA_SELECTOR, keygen(config, "mail.example.com"), domain="mail.example.com")
    dns_server.add_txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=reject; adkim={adkim}")
    vacation_set(config, RCPT, "--message", "away", "--from", "Alice <alice@mail.example.com>")
    _deliver(config)
    [received] = sink.wait_for(1)
    [fields] = signatures(received.data)
    assert fields[b"d"] == b"mail.example.com"
    assert verify_each(received.data, dns_server) == [True]
    assert dmarc_passes(received.data, dns_server, "mail.example.com", DOMAIN)
    # A signature by the parent domain alone would pass only the relaxed policy.
    from responder.verify.alignment import alignment

    assert alignment(DOMAIN, "mail.example.com") == "relaxed"


def test_a_dsn_is_signed_by_its_from_domain(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server)
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    result = run_admin(
        config, "bounce", "set", "old@example.com", "--message", "Gone; write to new@example.com"
    )
    assert result.returncode == 0, result.stderr.decode()
    _deliver(config, recipient="old@example.com")
    [received] = sink.wait_for(1)
    assert received.mail_from == "<>"
    assert received.message.get_content_type() == "multipart/report"
    [fields] = signatures(received.data)
    assert fields[b"d"] == DOMAIN.encode()
    assert verify_each(received.data, dns_server) == [True]
    assert _opendkim(received.data, dns_server, RSA_SELECTOR) == 0


def test_no_key_sends_unsigned_and_warns_once_an_hour(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server)
    vacation_set(config, RCPT, "--message", "away")
    first = _deliver(config)
    [received] = sink.wait_for(1)
    assert signatures(received.data) == []
    assert "WARNING" in first and f"responses from {DOMAIN} are sent unsigned" in first
    assert "not DKIM-signed: no rsa key" in first
    second = _deliver(config, sender="carol@example.org")
    assert len(sink.wait_for(2)) == 2
    # Another process, within the hour: the decision line says it, the warning is not repeated.
    assert "not DKIM-signed" in second and "are sent unsigned" not in second
    [latest, earliest] = _audit(config)
    assert "not DKIM-signed" in str(earliest["detail"]) and latest["action"] == "reply"


def test_require_without_a_key_drops_as_unsigned_and_gives_the_interval_back(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server, require=True)
    vacation_set(config, RCPT, "--message", "away")
    log = _deliver(config)
    assert "reason=unsigned" in log
    [row] = _audit(config)
    assert (row["action"], row["reason"]) == ("drop", "unsigned")
    assert "no rsa key" in str(row["detail"])
    assert sink.received() == []
    # The claim was given back: once the key is there, the same sender is answered, signed.
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    _deliver(config)
    [received] = sink.wait_for(1)
    assert verify_each(received.data, dns_server) == [True]


def test_a_group_readable_key_is_refused_at_delivery_and_by_check(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server, require=True)
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    key = keys_dir / DOMAIN / f"{RSA_SELECTOR}.rsa.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o640)
    vacation_set(config, RCPT, "--message", "away")
    log = _deliver(config)
    assert "reason=unsigned" in log and "open to group or others (mode 0640)" in log
    assert sink.received() == []
    check = run_admin(config, "dkim", "check", DOMAIN)
    assert check.returncode == 1
    assert check.stdout.decode().startswith("unreadable key:") and "chmod 600" in check.stdout.decode()


def test_an_unusable_key_file_is_a_logged_decision(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server)
    (keys_dir / DOMAIN).mkdir(mode=0o700)
    key = keys_dir / DOMAIN / f"{RSA_SELECTOR}.rsa.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    vacation_set(config, RCPT, "--message", "away")
    log = _deliver(config)
    assert "action=reply" in log and "is not an unencrypted PEM RSA private key" in log
    [received] = sink.wait_for(1)
    assert signatures(received.data) == []


def test_explain_shows_the_signature(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer
) -> None:
    config = _dkim_config(make_config, keys_dir, dns_server)
    keygen(config, DOMAIN)
    vacation_set(config, RCPT, "--message", "away")
    result = run_admin(
        config, "explain", "--sender", SENDER, "--recipient", RCPT, stdin=sample("personal.eml")
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;" in result.stdout.decode()


def test_the_service_signs_with_keys_read_at_start_and_says_which_it_refused(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink, tmp_path: Path
) -> None:
    from tests.lmtp_support import LmtpClient, ServiceProcess

    socket_path = tmp_path / "lmtp.sock"
    config = make_config(
        dkim={"keys_dir": str(keys_dir), "ed25519": True},
        verify={"require": "off"},
        server={"socket": f"unix:{socket_path}"},
    )
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    publish(dns_server, ED_SELECTOR, keygen(config, DOMAIN, "--algorithm", "ed25519"))
    keygen(config, "exposed.example")
    (keys_dir / "exposed.example" / f"{RSA_SELECTOR}.rsa.pem").chmod(0o644)
    vacation_set(config, RCPT, "--message", "away")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        log = service.log()
        assert "DKIM key refused:" in log and "exposed.example" in log and "mode 0644" in log
        # Keys are kept from the start: removing the files now changes nothing until a reload.
        for key in (keys_dir / DOMAIN).iterdir():
            key.unlink()
        client = LmtpClient(socket_path)
        client.greet()
        for number, sender in enumerate((SENDER, "carol@example.org")):
            message = sample("personal.eml").replace(b"abc123", f"abc{number}".encode())
            [(code, text)] = client.send_message(sender, [RCPT], message)
            assert code == 250 and "reply" in text
        client.close()
    finally:
        service.stop()
    received = sink.wait_for(2)
    assert [verify_each(r.data, dns_server) for r in received] == [[True, True], [True, True]]


def test_openssl_computes_the_same_rsa_signature_as_dkimpy(tmp_path: Path) -> None:
    import hashlib

    import dkim.crypto

    from responder.mail.dkimkeys import generate
    from responder.mail.signing import _openssl_rsa_sign

    key = dkim.crypto.parse_pem_private_key(generate("rsa", 2048))
    for data in (b"", b"a DKIM header hash", bytes(range(256))):
        # PKCS#1 v1.5 signatures are deterministic: the same key and digest give the same bytes.
        assert _openssl_rsa_sign(hashlib.sha256(data), key) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(
            hashlib.sha256(data), key
        )


def test_the_service_says_when_the_published_record_does_not_match(
    make_config: ConfigFactory, keys_dir: Path, dns_server: DNSServer, sink: SmtpSink, tmp_path: Path
) -> None:
    from tests.lmtp_support import LmtpClient, ServiceProcess

    socket_path = tmp_path / "lmtp.sock"
    config = make_config(
        dkim={"keys_dir": str(keys_dir)},
        verify={"require": "off", "dns_servers": [dns_server.address], "dns_timeout": 2},
        server={"socket": f"unix:{socket_path}"},
    )
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    keygen(config, DOMAIN, "--force")  # the key changed, the record did not
    vacation_set(config, RCPT, "--message", "away")
    service = ServiceProcess(config, socket_path, tmp_path / "service.log").start()
    try:
        log = service.wait_log("DKIM record mismatch at responder._domainkey.example.com")
        assert "publish v=DKIM1; k=rsa; p=" in log
        client = LmtpClient(socket_path)
        client.greet()
        [(code, _)] = client.send_message(SENDER, [RCPT], sample("personal.eml"))
        client.close()
        assert code == 250
    finally:
        service.stop()
    [received] = sink.wait_for(1)
    # Signed all the same (no worse than unsigned for a receiver), and the decision says why it fails.
    assert verify_each(received.data, dns_server) == [False]
    [row] = _audit(config)
    assert row["action"] == "reply"
    assert "DNS record at responder._domainkey.example.com: mismatch" in str(row["detail"])
