"""Configuration: defaults, durations, and errors that name the offending key."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from responder.config.load import ConfigError, load, settings_from_mapping
from responder.config.settings import Settings
from responder.config.values import (
    Limit,
    SocketSpec,
    parse_duration,
    parse_limit,
    parse_mode,
    parse_socket,
)
from tests.conftest import ConfigFactory
from tests.helpers import deliver_args, hook_env, run_hook, sample, vacation_set


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("0s", 0), (90, 90)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1s", "1y", "d7"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "spec", "spelled"),
    [
        ("unix:/run/responder/lmtp", SocketSpec(path="/run/responder/lmtp"), "unix:/run/responder/lmtp"),
        ("127.0.0.1:24", SocketSpec(host="127.0.0.1", port=24), "127.0.0.1:24"),
        ("inet:localhost:10037", SocketSpec(host="localhost", port=10037), "localhost:10037"),
        ("[::1]:24", SocketSpec(host="::1", port=24), "[::1]:24"),
        ("127.0.0.1:0", SocketSpec(host="127.0.0.1", port=0), "127.0.0.1:0"),
    ],
)
def test_socket_specs(text: str, spec: SocketSpec, spelled: str) -> None:
    assert parse_socket(text) == spec
    assert str(spec) == spelled
    assert parse_socket(spelled) == spec


@pytest.mark.parametrize("key", ["policy.listen", "server.socket", "server.metrics_listen"])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:run/lmtp", "a UNIX socket needs an absolute path"),
        ("localhost", "expected unix:/path or HOST:PORT"),
        ("localhost:port", "expected unix:/path or HOST:PORT"),
        ("localhost:65536", "expected unix:/path or HOST:PORT"),
        (":24", "expected unix:/path or HOST:PORT"),
    ],
)
def test_one_socket_syntax_for_both_daemons(key: str, text: str, message: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"bad value for {key}: {message}"):
        settings_from_mapping({section: {name: text}})


def test_the_service_socket_needs_a_fixed_port() -> None:
    # The hook must know where to connect; the policy server may let the system choose.
    with pytest.raises(ConfigError, match=r"bad value for server\.socket: the service needs a fixed port"):
        settings_from_mapping({"server": {"socket": "127.0.0.1:0"}})
    assert settings_from_mapping({"policy": {"listen": "127.0.0.1:0"}}).policy.listen.port == 0
    assert settings_from_mapping({"server": {"socket": ""}}).server.socket is None


def test_limits_and_modes() -> None:
    assert parse_limit(" 10 / 1d ") == Limit(10, 86400)
    assert parse_limit("OFF") is None
    assert str(Limit(50, 3600)) == "50/1h"
    for bad in ("10", "0/1d", "10/1.5s", "10/1 d", "ten/1d"):
        with pytest.raises(ValueError, match=r"COUNT/WINDOW|count|window|duration"):
            parse_limit(bad)
    assert (parse_mode("0660"), parse_mode("600")) == (0o660, 0o600)
    for bad in ("0680", "66", "00660", "rw-"):
        with pytest.raises(ValueError, match="octal file mode"):
            parse_mode(bad)


def test_defaults() -> None:
    settings = settings_from_mapping({})
    assert settings.database.url == "sqlite:////var/lib/responder/responder.sqlite3"
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.starttls) == ("127.0.0.1", 25, False)
    assert settings.reply.envelope_sender == "null"
    assert (settings.reply.default_interval, settings.reply.min_interval, settings.reply.max_interval) == (
        7 * 86400,
        86400,
        60 * 86400,
    )
    assert settings.deliver.deadline == 60
    assert settings.verify.require == "aligned"
    assert settings.log.syslog is False


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"smtp": {"prot": 25}}, "unknown key smtp.prot"),
        ({"smpt": {}}, "unknown section [smpt]"),
        ({"smtp": {"port": "25"}}, "bad value for smtp.port"),
        ({"smtp": {"port": 70000}}, "bad value for smtp.port"),
        ({"reply": {"envelope_sender": "sender"}}, "bad value for reply.envelope_sender"),
        ({"reply": {"default_interval": "a week"}}, "bad value for reply.default_interval"),
        ({"reply": {"min_interval": "2d", "max_interval": "1d"}}, "reply.min_interval"),
        ({"log": {"syslog": "yes"}}, "bad value for log.syslog"),
        ({"verify": {"require": "maybe"}}, "bad value for verify.require"),
        ({"smtp": {"username": "u"}}, "smtp.password"),
        ({"smtp": 5}, "[smtp] must be a table"),
        ({"verify": {"dns_servers": ["ns1.example.com"]}}, "bad value for verify.dns_servers"),
        ({"verify": {"dns_servers": ["127.0.0.1:99999"]}}, "bad value for verify.dns_servers"),
        ({"server": {"xforward_hosts": ["localhost"]}}, "bad value for server.xforward_hosts"),
    ],
)
def test_errors_name_the_key(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(document)
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\nport = 25\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)


def test_environment_variable_names_the_config(make_config: ConfigFactory) -> None:
    config = make_config()
    result = run_hook(config, "db", "current")
    assert result.returncode == 0
    via_env = subprocess.run(
        [sys.executable, "-m", "responder", "db", "current"],
        capture_output=True,
        env=hook_env({"RESPONDER_CONFIG": str(config)}),
        check=False,
    )
    assert via_env.returncode == 0, via_env.stderr.decode()
    assert via_env.stdout == result.stdout


def test_syslog_mail_facility(make_config: ConfigFactory, tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(10)
        config = make_config(log={"syslog": True, "syslog_socket": path})
        vacation_set(config, "alice@example.com", "--message", "away")
        result = run_hook(
            config, *deliver_args("bob@example.org", "alice@example.com"), stdin=sample("list-id.eml")
        )
        assert result.returncode == 0
        datagram = syslog.recv(65536).decode()
    # <22> = facility mail (2) * 8 + severity info (6)
    assert datagram.startswith("<22>responder[")
    assert "action=suppress reason=list-header" in datagram
    assert b"reason=list-header" not in result.stderr  # stderr only carries warnings when syslog is on


def test_readme_reference_lists_every_key_with_its_default() -> None:
    import dataclasses
    import re
    import tomllib

    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```toml responder\.toml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    assert block is not None
    document = tomllib.loads(block.group(1))
    documented = {(section, key) for section, values in document.items() for key in values}
    defaults = Settings()
    expected = {
        (section.name, key.metadata.get("key") or key.name)
        for section in dataclasses.fields(Settings)
        if section.name != "source"
        for key in dataclasses.fields(getattr(defaults, section.name))
    }
    assert documented == expected
    assert settings_from_mapping(document) == defaults


def test_the_metrics_endpoint_is_off_unless_named() -> None:
    assert settings_from_mapping({}).server.metrics_listen is None
    server = settings_from_mapping(
        {"server": {"metrics_listen": "127.0.0.1:0", "health_threshold": "2m"}}
    ).server
    assert (server.metrics_listen, server.health_threshold) == (SocketSpec(host="127.0.0.1", port=0), 120.0)
    with pytest.raises(ConfigError, match=r"bad value for server\.health_threshold: must be greater than 0"):
        settings_from_mapping({"server": {"health_threshold": "0s"}})
