"""The configuration's sections as frozen dataclasses, each field with the converter of its TOML value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from responder.config.values import (
    Limit,
    SocketSpec,
    check_network,
    parse_dns_server,
    parse_duration,
    parse_limit,
    parse_mode,
    parse_socket,
)


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


def _limit(value: object) -> Limit | None:
    return parse_limit(_str(value))


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
    per_sender: Limit | None = _opt(_limit, parse_limit("10/1d"))  # noqa: RUF009
    per_sender_domain: Limit | None = _opt(_limit, parse_limit("50/1h"))  # noqa: RUF009
    per_recipient: Limit | None = _opt(_limit, parse_limit("200/1h"))  # noqa: RUF009
    # `global` is a Python keyword: the TOML key is mapped onto this field.
    global_: Limit | None = _opt(_limit, parse_limit("1000/1h"), key="global")  # noqa: RUF009


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


def _socket(value: object) -> SocketSpec:
    return parse_socket(_str(value))


def _server_socket(value: object) -> SocketSpec | None:
    """Empty (no service), or a socket the hook can connect to: a TCP port cannot be left to the system."""
    text = _str(value)
    if not text:
        return None
    spec = parse_socket(text)
    if not spec.path and spec.port == 0:
        raise ValueError(f"the service needs a fixed port for the hook to connect to, got {text!r}")
    return spec


def _positive(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        converted = convert(value)
        if converted <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return converted

    return check


def _mode(value: object) -> int:
    return parse_mode(_str(value))


@dataclass(frozen=True)
class PolicySettings:
    # RUF009: _opt builds a dataclass field, and a SocketSpec is immutable.
    listen: SocketSpec = _opt(_socket, SocketSpec(host="127.0.0.1", port=10037))  # noqa: RUF009
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
    # Database lookups run at the same time, each in a thread; more wait for a turn.
    lookup_threads: int = _opt(_positive(_int), 4)
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


def _networks(value: object) -> tuple[str, ...]:
    return tuple(check_network(network) for network in _str_tuple(value))


@dataclass(frozen=True)
class ServerSettings:
    # The LMTP service (responder serve). When set, `responder deliver` hands messages to it.
    socket: SocketSpec | None = _opt(_server_socket, None)  # noqa: RUF009 (_opt builds a field)
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


def _imap_url(value: object) -> str:
    """``imap://HOST[:PORT]`` (STARTTLS) or ``imaps://HOST[:PORT]``; nothing else."""
    from urllib.parse import urlsplit

    text = _str(value)
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not a port in {text!r}") from None
    if parts.scheme not in ("imap", "imaps") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"expected imap://HOST[:PORT] or imaps://HOST[:PORT], got {text!r}")
    if parts.username or parts.password or parts.query or parts.fragment or port == 0:
        raise ValueError(f"expected imap://HOST[:PORT] or imaps://HOST[:PORT], got {text!r}")
    return text


def _base_url(value: object) -> str:
    from urllib.parse import urlsplit

    text = _str(value)
    if text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"expected an http:// or https:// URL such as https://mail.example.com, got {text!r}"
            )
    return text.rstrip("/")


def _signin_limit(value: object) -> Limit:
    limit = _limit(value)
    if limit is None:
        raise ValueError('sign-in attempts cannot be unlimited: give COUNT/WINDOW such as "5/15m"')
    return limit


@dataclass(frozen=True)
class WebSettings:
    """``responder web``: pages, JMAP and the API over HTTP, sharing the database with the other commands."""

    # RUF009: _opt builds a dataclass field, and a SocketSpec is immutable.
    listen: SocketSpec = _opt(_socket, SocketSpec(host="127.0.0.1", port=8080))  # noqa: RUF009
    socket_mode: int = _opt(_mode, 0o660)
    # The URL people and clients use (scheme, host, path prefix); empty: taken from each request.
    base_url: str = _opt(_base_url, "")
    # PEM files; both set means the service speaks HTTPS itself, else a reverse proxy does.
    tls_cert: str = _opt(_str, "")
    tls_key: str = _opt(_str, "")
    # Where mail passwords are checked: imap:// with STARTTLS (plain LOGIN only to a loopback
    # server that offers no STARTTLS), or imaps://.
    imap: str = _opt(_imap_url, "imap://127.0.0.1:143")
    imap_timeout: float = _opt(_positive(_duration), 10.0)
    # CA certificates that verify the IMAP server; empty: the system's.
    imap_ca_file: str = _opt(_str, "")
    # A file holding the key that signs session cookies (at least 32 bytes); not the key itself.
    secret_file: str = _opt(_str, "/etc/responder/web-secret")
    session_lifetime: float = _opt(_positive(_duration), 8 * 3600.0)
    # Failed sign-ins allowed per account and per client address in a window.
    # RUF009: _opt builds a dataclass field, and a Limit is frozen.
    signin_per_account: Limit = _opt(_signin_limit, parse_limit("5/15m"))  # noqa: RUF009
    signin_per_client: Limit = _opt(_signin_limit, parse_limit("20/15m"))  # noqa: RUF009
    # Requests with a larger body are refused with 413 before they are read.
    max_body: int = _opt(_positive(_int), 1024 * 1024)
    # Reverse proxies whose X-Forwarded-For/-Proto headers are believed.
    proxy_hosts: tuple[str, ...] = _opt(_networks, ())


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
    web: WebSettings = field(default_factory=WebSettings)
    source: str = ""
