"""TOML configuration to frozen settings; every error names the offending key."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/responder/responder.toml")
ENV_VAR = "RESPONDER_CONFIG"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid."""


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"negative duration: {text!r}")
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration (use e.g. 30s, 12h, 7d): {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact ``7d`` / ``12h`` / ``30s`` spelling of a number of seconds."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds}s"
    for unit in ("d", "h", "m"):
        if whole and whole % _UNITS[unit] == 0:
            return f"{whole // _UNITS[unit]}{unit}"
    return f"{whole}s"


def _duration(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError(f"not a duration: {value!r}")
    return parse_duration(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _port(value: object) -> int:
    port = _int(value)
    if not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port}")
    return port


def _str_tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def parse_dns_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address to (address, port).

    Raises ``ValueError``; the configuration loader validates ``verify.dns_servers`` with it.
    """
    import ipaddress  # only configurations that name DNS servers pay for it

    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a DNS server address: {text!r}")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"DNS server must be an IP address, optionally with :port: {text!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a port number in {text!r}")
    return str(address), int(port)


def _dns_servers(value: object) -> tuple[str, ...]:
    servers = _str_tuple(value)
    for server in servers:
        parse_dns_server(server)
    return servers


def _choice(*allowed: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _str(value)
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return convert


def _opt(convert: Callable[[object], Any], default: Any, key: str = "") -> Any:
    """A dataclass field with a TOML converter attached; ``key`` when the TOML name is not an identifier."""
    return field(default=default, metadata={"convert": convert, "key": key})


@dataclass(frozen=True)
class Limit:
    """At most ``count`` responses per fixed ``window`` of seconds."""

    count: int
    window: int

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


def parse_limit(value: object) -> Limit | None:
    """``"COUNT/WINDOW"`` (e.g. ``"10/1d"``) as a Limit, ``"off"`` as None."""
    text = _str(value)
    if text.strip().lower() == "off":
        return None
    match = _LIMIT.match(text)
    if not match:
        raise ValueError(f'expected COUNT/WINDOW such as "10/1d", or "off", got {text!r}')
    count, window = int(match.group(1)), parse_duration(match.group(2))
    if count < 1:
        raise ValueError(f'the count must be at least 1 (use "off" for no limit), got {text!r}')
    if window < 1 or window != int(window):
        raise ValueError(f"the window must be a whole number of seconds, at least 1s, got {text!r}")
    return Limit(count, int(window))


# URL schemes whose driver is not the one this package installs, and the URL to write instead.
_DRIVERS = {
    "postgresql": ("psycopg2", "postgresql+psycopg://USER:PASSWORD@HOST/DATABASE", "responder[postgresql]"),
    "mysql": ("MySQLdb", "mysql+pymysql://USER:PASSWORD@HOST/DATABASE", "responder[mysql]"),
    "mariadb": ("MySQLdb", "mysql+pymysql://USER:PASSWORD@HOST/DATABASE", "responder[mysql]"),
}
_INSTALLED_DRIVERS = {"psycopg": "responder[postgresql]", "pymysql": "responder[mysql]"}


def _database_url(value: object) -> str:
    """A database URL whose driver is there: SQLAlchemy's own errors would not say what to write."""
    from importlib.util import find_spec

    url = _str(value)
    scheme = url.partition("://")[0].lower()
    backend, _, driver = scheme.partition("+")
    if backend == "postgres":
        raise ValueError(f"postgres:// is not a URL SQLAlchemy reads: write {_DRIVERS['postgresql'][1]}")
    if backend in _DRIVERS and not driver:
        module, instead, extra = _DRIVERS[backend]
        if find_spec(module) is None:
            raise ValueError(
                f"{backend}:// means the {module} driver, which is not installed: write {instead} "
                f"(pip install '{extra}')"
            )
    if driver in _INSTALLED_DRIVERS and find_spec(driver) is None:
        raise ValueError(f"the {driver} driver is not installed: pip install '{_INSTALLED_DRIVERS[driver]}'")
    return url


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _opt(_database_url, "sqlite:////var/lib/responder/responder.sqlite3")
    # How long a writer waits for a lock (the SQLite file, a PostgreSQL or InnoDB row) before the hook
    # defers with 75.
    busy_timeout: float = _opt(_duration, 10.0)


@dataclass(frozen=True)
class StoreSettings:
    # `responder purge` deletes audit rows older than this.
    audit_retention: float = _opt(_duration, 90 * 86400.0)


@dataclass(frozen=True)
class LimitSettings:
    """Caps on responses sent, counted in fixed windows shared by every process using the database."""

    # RUF009: _opt builds a dataclass field, and a Limit is frozen.
    per_sender: Limit | None = _opt(parse_limit, parse_limit("10/1d"))  # noqa: RUF009
    per_sender_domain: Limit | None = _opt(parse_limit, parse_limit("50/1h"))  # noqa: RUF009
    per_recipient: Limit | None = _opt(parse_limit, parse_limit("200/1h"))  # noqa: RUF009
    # `global` is a Python keyword: the TOML key is mapped onto this field.
    global_: Limit | None = _opt(parse_limit, parse_limit("1000/1h"), key="global")  # noqa: RUF009


@dataclass(frozen=True)
class SmtpSettings:
    host: str = _opt(_str, "127.0.0.1")
    port: int = _opt(_port, 25)
    timeout: float = _opt(_duration, 30.0)
    starttls: bool = _opt(_bool, False)
    username: str = _opt(_str, "")
    password: str = _opt(_str, "")
    # Name used in EHLO and in generated Message-IDs; empty: EHLO sends this host's name (it names the
    # client host, RFC 5321 4.1.1.1), Message-IDs use the responding address's domain.
    hostname: str = _opt(_str, "")


@dataclass(frozen=True)
class ReplySettings:
    envelope_sender: str = _opt(_choice("null", "recipient"), "null")
    default_interval: float = _opt(_duration, 7 * 86400.0)
    min_interval: float = _opt(_duration, 86400.0)
    max_interval: float = _opt(_duration, 60 * 86400.0)
    templates_dir: str = _opt(_str, "")
    default_template: str = _opt(_str, "vacation.txt.j2")


@dataclass(frozen=True)
class DeliverSettings:
    # Whole-run deadline of the hook, far below Postfix's command_time_limit (1000 s).
    deadline: float = _opt(_duration, 60.0)
    # More Received fields than this means a mail loop (RFC 5321 section 6.3).
    max_received: int = _opt(_int, 50)


@dataclass(frozen=True)
class LogSettings:
    syslog: bool = _opt(_bool, False)
    syslog_socket: str = _opt(_str, "/dev/log")
    level: str = _opt(_choice("debug", "info", "warning", "error"), "info")


@dataclass(frozen=True)
class VerifySettings:
    require: str = _opt(_choice("aligned", "spf", "dkim", "off"), "aligned")
    trusted_authserv_ids: tuple[str, ...] = _opt(_str_tuple, ())
    dns_servers: tuple[str, ...] = _opt(_dns_servers, ())
    dns_timeout: float = _opt(_duration, 3.0)
    budget: float = _opt(_duration, 8.0)
    dkim_identity: str = _opt(_choice("mailbox", "domain"), "mailbox")


@dataclass(frozen=True)
class Listen:
    """A policy server socket: ``unix:/path``, or ``HOST:PORT`` / ``[v6]:PORT`` (``inet:`` optional)."""

    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"a UNIX socket needs an absolute path, got {text!r}")
        return Listen(path=path)
    spec = text.removeprefix("inet:")
    host, colon, port = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected unix:/path or HOST:PORT, got {text!r}")
    # Port 0 lets the system choose; the server logs the port it got.
    return Listen(host=host, port=int(port))


def _listen(value: object) -> Listen:
    return parse_listen(_str(value))


def _positive(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        converted = convert(value)
        if converted <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return converted

    return check


def _mode(value: object) -> int:
    text = _str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f'expected an octal file mode such as "0660", got {text!r}')
    return int(text, 8)


@dataclass(frozen=True)
class PolicySettings:
    # RUF009: _opt builds a dataclass field, and a Listen is frozen.
    listen: Listen = _opt(_listen, Listen(host="127.0.0.1", port=10037))  # noqa: RUF009
    # Mode of a UNIX socket: smtpd(8) runs as the postfix user and must be able to connect.
    socket_mode: int = _opt(_mode, 0o660)
    # The answer when the database cannot be asked: DUNNO lets the mail in (it may be bounced after
    # the queue), DEFER_IF_PERMIT makes the client retry later.
    on_error: str = _opt(_choice("dunno", "defer_if_permit"), "dunno")
    # Longer than Postfix's smtpd_policy_service_max_idle (300 s): Postfix closes idle connections first.
    idle_timeout: float = _opt(_positive(_duration), 330.0)
    # A request must arrive whole within this time once its first byte came.
    request_timeout: float = _opt(_positive(_duration), 10.0)
    lookup_timeout: float = _opt(_positive(_duration), 3.0)
    max_connections: int = _opt(_positive(_int), 500)


@dataclass(frozen=True)
class BounceSettings:
    # At most one DSN per sender and retired address within this time; 0 sends one for every message.
    interval: float = _opt(_duration, 86400.0)
    # The human-readable part, looked up like the reply templates (reply.templates_dir first).
    template: str = _opt(_str, "bounce.txt.j2")
    # Reporting-MTA of the DSN; empty means smtp.hostname, else the retired address's domain.
    reporting_mta: str = _opt(_str, "")
    # From of the DSN; empty means "Mail Delivery System <MAILER-DAEMON@domain of the retired address>".
    from_header: str = _opt(_str, "")


def _server_socket(value: object) -> str:
    text = _str(value)
    if text:
        from responder.lmtp.client import parse_socket

        if parse_socket(text) is None:
            raise ValueError(f"expected unix:/path or HOST:PORT, got {text!r}")
    return text


def _networks(value: object) -> tuple[str, ...]:
    import ipaddress

    networks = _str_tuple(value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(
                f"expected IP addresses or networks such as 192.0.2.0/24, got {network!r}"
            ) from None
    return networks


@dataclass(frozen=True)
class ServerSettings:
    # The LMTP service (responder serve). When set, `responder deliver` hands messages to it.
    socket: str = _opt(_server_socket, "")
    socket_mode: int = _opt(_mode, 0o660)
    # TCP clients whose XFORWARD (client address, HELO, queue id) is believed; UNIX socket clients always.
    xforward_hosts: tuple[str, ...] = _opt(_networks, ())
    # Messages decided at the same time, each in a thread; more wait for a turn.
    workers: int = _opt(_positive(_int), 8)
    max_connections: int = _opt(_positive(_int), 100)
    # Bytes kept of one message; the rest is read and dropped, never refused (a refusal would bounce).
    max_message_size: int = _opt(_positive(_int), 64 * 1024 * 1024)
    idle_timeout: float = _opt(_positive(_duration), 300.0)
    # How long `responder deliver` tries to reach the service before deciding in-process.
    connect_timeout: float = _opt(_positive(_duration), 5.0)
    # How long SIGTERM waits for messages in flight before the service exits anyway.
    stop_timeout: float = _opt(_positive(_duration), 90.0)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    reply: ReplySettings = field(default_factory=ReplySettings)
    deliver: DeliverSettings = field(default_factory=DeliverSettings)
    log: LogSettings = field(default_factory=LogSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    bounce: BounceSettings = field(default_factory=BounceSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    source: str = ""


def _section(cls: type[Any], name: str, data: object) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
        try:
            values[known[key].name] = known[key].metadata["convert"](raw)
        except ValueError as exc:
            raise ConfigError(f"bad value for {name}.{key}: {exc}") from None
    return cls(**values)


def settings_from_mapping(data: Mapping[str, object], source: str = "") -> Settings:
    """Build and validate settings from an already parsed TOML document."""
    sections = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "source"}
    built: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]")
        cls = next(f.default_factory for f in dataclasses.fields(Settings) if f.name == name)
        built[name] = _section(cls, name, value)  # type: ignore[arg-type]
    settings = Settings(**built, source=source)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    reply = settings.reply
    if reply.min_interval > reply.max_interval:
        raise ConfigError("bad value for reply.min_interval: greater than reply.max_interval")
    if settings.smtp.username and not settings.smtp.password:
        raise ConfigError("bad value for smtp.password: smtp.username is set without a password")


def config_path(explicit: str | None) -> Path:
    """The file named by ``--config``, else ``$RESPONDER_CONFIG``, else the system default."""
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: Path) -> Settings:
    """Read and validate one configuration file; ``ConfigError`` says what is wrong."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return settings_from_mapping(data, source=str(path))
