"""A real authoritative DNS server on loopback for tests: UDP and TCP on one OS-chosen port.

Usage::

    with DNSServer() as server:
        server.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        server.add("mx.example.com", "A", "192.0.2.25")
        server.silence("slow.example")          # queries at or below it are never answered
        settings = VerifySettings(dns_servers=(server.address,), dns_timeout=0.5)

The server answers every name it is asked about with the authority bit set: the records it
holds, CNAME chains within them, NODATA for names that exist (or have names below them) without
the asked type, and NXDOMAIN otherwise. UDP answers that do not fit the client's limit (512
bytes, or its EDNS payload size) are truncated with TC set, so clients retry over TCP.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_MAX_CNAME_CHAIN = 8


@dataclass(frozen=True)
class Query:
    """One question the server received."""

    name: str  # lower case, without the final dot
    rdtype: str
    transport: str  # "udp" or "tcp"


class DNSServer:
    """Authoritative test DNS server; records can be added and removed while it runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        # 0: the OS picks; a fixed port only inside a network namespace of the test's own.
        self.wanted_port = port
        self.port = 0
        self.queries: list[Query] = []
        self.errors: list[Exception] = []
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[dns.rdata.Rdata]] = {}
        self._silent: set[dns.name.Name] = set()
        self._failing: set[dns.name.Name] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()

    # lifecycle

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6), as ``verify.dns_servers`` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> DNSServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # The OS picks the UDP port; TCP must get the same number, which another process may
        # hold, so try a few times.
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, self.wanted_port))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        udp.settimeout(0.1)
        tcp.settimeout(0.1)
        self._udp, self._tcp, self.port = udp, tcp, port
        self._stopping.clear()
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, name=f"dnsserver-{port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # zone data

    def add(self, name: str, rdtype: str, *rdatas: str) -> None:
        """Add records given in zone-file text, e.g. ``add("example.com", "MX", "10 mx.example.com.")``."""
        owner = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        parsed = [
            dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=dns.name.root, relativize=False)
            for text in rdatas
        ]
        with self._lock:
            self._records.setdefault((owner, kind), []).extend(parsed)

    def add_txt(self, name: str, *texts: str) -> None:
        """One TXT record per text; texts longer than 255 bytes are split into strings."""
        owner = dns.name.from_text(name)
        records = []
        for text in texts:
            data = text.encode()
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            records.append(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, _txt_zone_text(chunks)))
        with self._lock:
            self._records.setdefault((owner, dns.rdatatype.TXT), []).extend(records)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        owner = dns.name.from_text(name)
        with self._lock:
            for key in [k for k in self._records if k[0] == owner]:
                if rdtype is None or key[1] == dns.rdatatype.from_text(rdtype):
                    del self._records[key]

    def silence(self, zone: str) -> None:
        """Never answer queries for ``zone`` or names below it (over UDP or TCP)."""
        with self._lock:
            self._silent.add(dns.name.from_text(zone))

    def fail(self, zone: str) -> None:
        """Answer SERVFAIL for ``zone`` and names below it."""
        with self._lock:
            self._failing.add(dns.name.from_text(zone))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._silent.clear()
            self._failing.clear()
            self.queries.clear()

    def queried(self, name: str) -> list[Query]:
        """The queries received for ``name`` or names below it."""
        zone = dns.name.from_text(name)
        with self._lock:
            queries = list(self.queries)
        return [q for q in queries if dns.name.from_text(q.name).is_subdomain(zone)]

    # answering

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The response to one query message, or None when it goes unanswered."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        try:
            return self._answer(query, transport)
        except Exception as exc:
            # Keep serving; a test can assert on ``errors`` and the client sees SERVFAIL.
            self.errors.append(exc)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _answer(self, query: dns.message.Message, transport: str) -> bytes | None:
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        with self._lock:
            self.queries.append(
                Query(
                    qname.to_text(omit_final_dot=True).lower(),
                    dns.rdatatype.to_text(qtype),
                    transport,
                )
            )
            if any(qname.is_subdomain(zone) for zone in self._silent):
                return None
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if any(qname.is_subdomain(zone) for zone in self._failing):
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                self._fill(response, qname, qtype)
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            records = self._records.get((name, qtype))
            if records:
                response.answer.append(_rrset(name, qtype, records))
                return
            cnames = self._records.get((name, dns.rdatatype.CNAME))
            if not cnames or qtype == dns.rdatatype.CNAME:
                break
            response.answer.append(_rrset(name, dns.rdatatype.CNAME, cnames))
            name = cnames[0].target  # type: ignore[attr-defined]
        if not any(owner.is_subdomain(name) for owner, _ in self._records):
            response.set_rcode(dns.rcode.NXDOMAIN)

    def _serve_udp(self) -> None:
        sock = self._udp
        assert sock is not None
        while not self._stopping.is_set():
            try:
                wire, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(wire, "udp")
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        sock = self._tcp
        assert sock is not None
        while not self._stopping.is_set():
            try:
                connection, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.add(connection)
            thread = threading.Thread(target=self._serve_connection, args=(connection,), daemon=True)
            thread.start()

    def _serve_connection(self, connection: socket.socket) -> None:
        connection.settimeout(0.2)
        try:
            while not self._stopping.is_set():
                header = _receive(connection, 2, self._stopping)
                if header is None:
                    return
                wire = _receive(connection, struct.unpack("!H", header)[0], self._stopping)
                if wire is None:
                    return
                reply = self.answer(wire, "tcp")
                if reply is not None:
                    connection.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()


def _receive(connection: socket.socket, size: int, stopping: threading.Event) -> bytes | None:
    data = b""
    while len(data) < size:
        if stopping.is_set():
            return None
        try:
            chunk = connection.recv(size - len(data))
        except TimeoutError:
            continue
        if not chunk:
            return None
        data += chunk
    return data


def _rrset(
    name: dns.name.Name, rdtype: dns.rdatatype.RdataType, records: list[dns.rdata.Rdata]
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
    for record in records:
        rrset.add(record, ttl=60)
    return rrset


def _txt_zone_text(chunks: list[bytes]) -> str:
    def quoted(chunk: bytes) -> str:
        out = []
        for byte in chunk:
            char = chr(byte)
            if char in '"\\':
                out.append("\\" + char)
            elif 0x20 <= byte < 0x7F:
                out.append(char)
            else:
                out.append(f"\\{byte:03d}")
        return '"' + "".join(out) + '"'

    return " ".join(quoted(chunk) for chunk in chunks)
