"""The value syntaxes of the configuration (durations, limits, sockets, modes, networks), parsed once.

The pipe hook's thin client parses ``server.socket`` with this module, so it imports nothing at the top
but the C ``_socket`` module: no ``re``, ``dataclasses`` or ``typing``. Every parser raises ValueError
with a message the configuration loader puts after the key's name.
"""

from __future__ import annotations

import _socket

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a bare number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a duration: {value!r}")
    if not isinstance(value, str):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    text = value.strip()
    unit = text[-1:] if text[-1:] in ("s", "m", "h", "d", "w") else ""
    number = text[: len(text) - len(unit)].rstrip()
    whole, dot, fraction = number.partition(".")
    if not whole.isdecimal() or (dot and not fraction.isdecimal()):
        raise ValueError(f"not a duration (use e.g. 30s, 12h, 7d): {value!r}")
    return float(number) * _UNITS[unit]


def format_duration(seconds: float) -> str:
    """The shortest exact ``7d`` / ``12h`` / ``30s`` spelling of a number of seconds."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds}s"
    for unit in ("d", "h", "m"):
        if whole and whole % _UNITS[unit] == 0:
            return f"{whole // _UNITS[unit]}{unit}"
    return f"{whole}s"


class Limit:
    """At most ``count`` responses per fixed ``window`` of seconds (immutable)."""

    __slots__ = ("count", "window")
    count: int
    window: int

    def __init__(self, count: int, window: int) -> None:
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "window", window)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Limit is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limit):
            return NotImplemented
        return (self.count, self.window) == (other.count, other.window)

    def __hash__(self) -> int:
        return hash((self.count, self.window))

    def __repr__(self) -> str:
        return f"Limit(count={self.count}, window={self.window})"

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def parse_limit(text: str) -> Limit | None:
    """``"COUNT/WINDOW"`` (e.g. ``"10/1d"``) as a Limit, ``"off"`` as None."""
    if text.strip().lower() == "off":
        return None
    count_text, slash, window_text = text.partition("/")
    count_text, window_text = count_text.strip(), window_text.strip()
    if not slash or not count_text.isdecimal() or not window_text or any(c.isspace() for c in window_text):
        raise ValueError(f'expected COUNT/WINDOW such as "10/1d", or "off", got {text!r}')
    count, window = int(count_text), parse_duration(window_text)
    if count < 1:
        raise ValueError(f'the count must be at least 1 (use "off" for no limit), got {text!r}')
    if window < 1 or window != int(window):
        raise ValueError(f"the window must be a whole number of seconds, at least 1s, got {text!r}")
    return Limit(count, int(window))


class SocketSpec:
    """A listening or connecting socket: ``unix:/path``, or ``[inet:]HOST:PORT`` / ``[v6]:PORT``.

    Exactly one of ``path`` (a UNIX socket) and ``host`` (TCP) is set; port 0 lets the system choose.
    """

    __slots__ = ("host", "path", "port")
    path: str
    host: str
    port: int

    def __init__(self, path: str = "", host: str = "", port: int = 0) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a SocketSpec is immutable: cannot set {name}")

    @property
    def family(self) -> int:
        if self.path:
            return _socket.AF_UNIX
        return _socket.AF_INET6 if ":" in self.host else _socket.AF_INET

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SocketSpec):
            return NotImplemented
        return (self.path, self.host, self.port) == (other.path, other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.path, self.host, self.port))

    def __repr__(self) -> str:
        return f"SocketSpec(path={self.path!r}, host={self.host!r}, port={self.port})"

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_socket(text: str) -> SocketSpec:
    """``unix:/path``, ``[inet:]host:port`` or ``[v6addr]:port``; the one parser of every socket setting."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"a UNIX socket needs an absolute path, got {text!r}")
        return SocketSpec(path=path)
    spec = text[len("inet:") :] if text.startswith("inet:") else text
    host, colon, port = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected unix:/path or HOST:PORT, got {text!r}")
    return SocketSpec(host=host, port=int(port))


def parse_mode(text: str) -> int:
    """An octal file mode such as ``"0660"`` or ``"660"``."""
    digits = text[1:] if len(text) == 4 and text.startswith("0") else text
    if len(digits) != 3 or not all(c in "01234567" for c in digits):
        raise ValueError(f'expected an octal file mode such as "0660", got {text!r}')
    return int(digits, 8)


def parse_dns_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address to (address, port)."""
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


def check_network(text: str) -> str:
    """An IP address or network such as ``192.0.2.0/24`` (host bits allowed), unchanged."""
    import ipaddress

    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected IP addresses or networks such as 192.0.2.0/24, got {text!r}") from None
    return text
