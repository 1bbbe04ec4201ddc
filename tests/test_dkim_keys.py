"""``responder dkim keygen`` and ``check`` against the loopback DNS; the [dkim] section's validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.config.load import ConfigError, settings_from_mapping
from responder.errors import ExitCode
from tests.conftest import ConfigFactory
from tests.dkimtools import DOMAIN, ED_SELECTOR, RSA_SELECTOR, keygen, publish
from tests.dnsserver import DNSServer
from tests.helpers import run_admin


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture
def config(make_config: ConfigFactory, tmp_path: Path, dns_server: DNSServer) -> Path:
    keys = tmp_path / "dkim"
    keys.mkdir(mode=0o700)
    return make_config(
        dkim={"keys_dir": str(keys), "ed25519": True},
        verify={"require": "off", "dns_servers": [dns_server.address], "dns_timeout": 2},
    )


def _check(config: Path, *args: str) -> tuple[int, str]:
    result = run_admin(config, "dkim", "check", DOMAIN, *args)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def test_keygen_writes_an_owner_only_key_and_a_split_record(config: Path, tmp_path: Path) -> None:
    result = run_admin(config, "dkim", "keygen", DOMAIN)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    key = tmp_path / "dkim" / DOMAIN / f"{RSA_SELECTOR}.rsa.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    line = next(line for line in out.splitlines() if " IN TXT " in line)
    assert line.startswith(f"{RSA_SELECTOR}._domainkey.{DOMAIN}. IN TXT ( ")
    # An RSA 2048 record is about 410 octets: two strings, the first exactly 255.
    strings = line.split('"')[1::2]
    assert len(strings) == 2 and len(strings[0]) == 255
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")


def test_keygen_refuses_to_overwrite_without_force(config: Path, tmp_path: Path) -> None:
    first = keygen(config, DOMAIN)
    again = run_admin(config, "dkim", "keygen", DOMAIN)
    assert again.returncode == ExitCode.EX_FAILURE
    assert "exists; --force replaces it" in again.stderr.decode()
    assert keygen(config, DOMAIN, "--force") != first


def test_keygen_ed25519_uses_its_own_selector(config: Path) -> None:
    text = keygen(config, DOMAIN, "--algorithm", "ed25519")
    assert text.startswith("v=DKIM1; k=ed25519; p=") and len(text) < 255


@pytest.mark.parametrize("bad", ["example..com", "x-.example", "a b", "localhost"])
def test_keygen_refuses_a_name_that_is_no_domain(config: Path, bad: str) -> None:
    result = run_admin(config, "dkim", "keygen", bad)
    assert result.returncode == ExitCode.EX_USAGE
    assert "not a domain name" in result.stderr.decode()


def test_check_match(config: Path, dns_server: DNSServer) -> None:
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    publish(dns_server, ED_SELECTOR, keygen(config, DOMAIN, "--algorithm", "ed25519"))
    code, out = _check(config)
    assert code == ExitCode.EX_OK, out
    assert out.count("match: ") == 2 and "mismatch" not in out
    code, out = _check(config, "--selector", ED_SELECTOR)
    assert code == ExitCode.EX_OK and out.startswith(f"match: {ED_SELECTOR}._domainkey.{DOMAIN} (ed25519")


def test_check_mismatch_after_the_key_changed(config: Path, dns_server: DNSServer) -> None:
    publish(dns_server, RSA_SELECTOR, keygen(config, DOMAIN))
    keygen(config, DOMAIN, "--force")
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_FAILURE
    assert out.startswith(f"mismatch: {RSA_SELECTOR}._domainkey.{DOMAIN}") and "another rsa key" in out
    assert "publish: v=DKIM1; k=rsa; p=" in out


def test_check_no_record(config: Path) -> None:
    keygen(config, DOMAIN)
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_FAILURE and out.startswith("no record: ")


@pytest.mark.parametrize(
    "text",
    ["v=spf1 -all", "google-site-verification=abc", "v=DKIM2; p=MIIB"],
    ids=["spf", "token", "version"],
)
def test_check_a_txt_record_that_is_not_dkim(config: Path, dns_server: DNSServer, text: str) -> None:
    keygen(config, DOMAIN)
    publish(dns_server, RSA_SELECTOR, text)
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_FAILURE and out.startswith("not a DKIM record: "), out


def test_check_a_revoked_key(config: Path, dns_server: DNSServer) -> None:
    keygen(config, DOMAIN)
    publish(dns_server, RSA_SELECTOR, "v=DKIM1; k=rsa; p=")
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_FAILURE and "revoked" in out


def test_check_without_a_key(config: Path) -> None:
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_FAILURE
    assert out.startswith("unreadable key: no rsa key") and "responder dkim keygen" in out


def test_check_when_dns_does_not_answer(config: Path, dns_server: DNSServer) -> None:
    keygen(config, DOMAIN)
    dns_server.fail(f"_domainkey.{DOMAIN}")
    code, out = _check(config, "--selector", RSA_SELECTOR)
    assert code == ExitCode.EX_TEMPFAIL and out.startswith("lookup failed: ")


def test_the_dkim_commands_need_keys_dir(make_config: ConfigFactory) -> None:
    result = run_admin(make_config(), "dkim", "check", DOMAIN)
    assert result.returncode == ExitCode.EX_FAILURE
    assert "dkim.keys_dir is not set" in result.stderr.decode()


@pytest.mark.parametrize(
    ("dkim", "message"),
    [
        ({"require": True}, "dkim.require: true without dkim.keys_dir"),
        ({"keys_dir": "relative/keys"}, "dkim.keys_dir: not an absolute path"),
        ({"keys_dir": "/k", "headers": ["Subject"]}, "dkim.headers: From must be signed"),
        ({"keys_dir": "/k", "headers": ["From", "Received"]}, "Received must not be signed"),
        ({"keys_dir": "/k", "selector": "bad selector"}, "not a DKIM selector"),
        ({"keys_dir": "/k", "ed25519": True, "ed25519_selector": "responder"}, "the same as dkim.selector"),
        ({"keys_dir": "/k", "algorithms": ["rsa"]}, "unknown key dkim.algorithms"),
    ],
)
def test_bad_dkim_settings_name_the_key(dkim: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping({"dkim": dkim})


def test_dkim_defaults() -> None:
    settings = settings_from_mapping({}).dkim
    assert (settings.keys_dir, settings.selector, settings.require, settings.ed25519) == (
        "",
        "responder",
        False,
        False,
    )
    assert set(settings.oversign) == {"From", "Subject", "To", "Date", "Message-ID", "Auto-Submitted"}
