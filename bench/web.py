#!/usr/bin/env python3
"""Benchmark: the web API under 50 concurrent clients, and `responder serve` decisions with and without it.

For SQLite, and for PostgreSQL when RESPONDER_TEST_POSTGRESQL_URL names a server (a database of its own
is created and dropped), one run starts a loopback SMTP sink, `responder serve` on a UNIX socket and
`responder web` on a loopback port, each its own process as in production, and measures:

* LMTP decisions per second alone (the load bench/run.py produces, through its Bench.burst);
* the API alone: 50 asyncio clients (httpx) doing GET and PUT of vacations with an admin token, for
  ``--api-seconds``: p50, p99 and requests per second of each;
* both at once: the decisions per second while the API load runs, and the API numbers meanwhile.

    python3 bench/web.py [--api-seconds 15] [--messages 1500] [--web-nice 0] [--work DIR]

On a machine with few cores the two services compete for them: ``--web-nice 10`` shows what a
lower priority for the web service (systemd ``Nice=``) leaves to the mail path.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# bench/run.py, a script beside this one: its LMTP load (Bench.burst) and its SMTP sink.
lmtp_bench: Any = importlib.import_module("run")

CLIENTS = 50
AWAY = lmtp_bench.AWAY


@dataclass
class Latencies:
    get: list[float] = field(default_factory=list)
    put: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def line(self, name: str) -> str:
        values = self.get if name == "GET" else self.put
        if not values:
            return f"{name:4} no requests"
        ordered = sorted(values)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        rate = len(values) / self.seconds
        return (
            f"{name:4} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   {rate:7.1f} req/s   ({len(values)} requests)"
        )


async def _client(
    client: httpx.AsyncClient, number: int, ready: asyncio.Event, stop: threading.Event, out: Latencies
) -> None:
    address = f"user{number}@example.com"
    await client.get(f"/api/v1/vacations/{AWAY}")  # connected before the clock starts
    await ready.wait()
    turn = 0
    while not stop.is_set():
        turn += 1
        start = time.perf_counter()
        if turn % 2:
            answer = await client.get(f"/api/v1/vacations/{AWAY}")
            kind = out.get
        else:
            body = {"message": f"Away, turn {turn}.", "subject": "Away", "end": "2030-01-01T00:00"}
            answer = await client.put(f"/api/v1/vacations/{address}", json=body)
            kind = out.put
        if answer.status_code == 200:
            kind.append(time.perf_counter() - start)
        else:
            out.errors += 1


def api_load(base: str, token: str, seconds: float, running: threading.Event | None = None) -> Latencies:
    """``CLIENTS`` clients, each with its own connection, alternating GET and PUT for ``seconds``."""
    out = Latencies()
    stop = threading.Event()

    async def main() -> None:
        # One TLS context for all: building 50 would cost seconds of this process's CPU.
        context = ssl.create_default_context()
        headers = {"Authorization": f"Bearer {token}"}
        clients = [
            httpx.AsyncClient(base_url=base, headers=headers, timeout=120, verify=context)
            for _ in range(CLIENTS)
        ]
        ready = asyncio.Event()
        tasks = [asyncio.create_task(_client(c, n, ready, stop, out)) for n, c in enumerate(clients)]
        await asyncio.sleep(1)  # every client has made its first request (or is about to)
        ready.set()
        if running is not None:
            running.set()
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        out.seconds = time.perf_counter() - start
        for client in clients:
            await client.aclose()

    asyncio.run(main())
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Backend:
    """One database with the sink, `responder serve` and `responder web` running on it."""

    def __init__(self, name: str, url: str, work: Path, web_nice: int = 0) -> None:
        self.web_nice = web_nice
        self.name = name
        self.url = url
        self.work = work / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.socket = self.work / "lmtp.sock"
        self.socket.unlink(missing_ok=True)

    def responder(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "responder", "--config", str(self.config), *args],
            check=True,
            capture_output=True,
        )
        return done.stdout.decode().strip()

    def _spawn(self, *args: str, nice: int = 0) -> subprocess.Popen[bytes]:
        log = (self.work / f"{args[-1]}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509 (no threads yet)
        )
        log.close()
        self.processes.append(process)
        return process

    def start(self) -> None:
        sink = subprocess.Popen(
            [sys.executable, "-c", lmtp_bench.SINK], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.processes.append(sink)
        assert sink.stdout is not None
        smtp_port = int(sink.stdout.readline())
        secret = self.work / "web-secret"
        secret.write_text(secrets.token_urlsafe(48))
        self.web_port = _free_port()
        self.config = self.work / "responder.toml"
        self.config.write_text(
            f'[database]\nurl = "{self.url}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nhostname = "bench.example"\n'
            '[verify]\nrequire = "off"\n'
            '[limits]\nper_sender = "10000000/1h"\nper_sender_domain = "10000000/1h"\n'
            'per_recipient = "10000000/1h"\nglobal = "10000000/1h"\n'
            f'[server]\nsocket = "unix:{self.socket}"\n'
            f'[web]\nlisten = "127.0.0.1:{self.web_port}"\nsecret_file = "{secret}"\n'
            f"max_body = 65536\n",
            encoding="utf-8",
        )
        self.responder("db", "upgrade")
        self.responder("vacation", "set", AWAY, "--message", "I am away.")
        self.token = self.responder("token", "create", "bench", "--admin")
        self._spawn("-m", "responder", "--config", str(self.config), "serve")
        self._spawn("-m", "responder", "--config", str(self.config), "web", nice=self.web_nice)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.socket.exists():
                    socket.create_connection(("127.0.0.1", self.web_port), timeout=2).close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise SystemExit(f"the services did not start; see the logs in {self.work}")
            time.sleep(0.1)
        self.lmtp = lmtp_bench.Bench(argparse.Namespace(work=self.work, throughput_messages=0))
        self.lmtp.socket = self.socket

    def decisions(self, count: int, offset: int) -> float:
        """Messages per second through `responder serve` (4 LMTP clients, recipients without a vacation)."""
        return float(self.lmtp.burst(count, 4, False, offset))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def measure(backend: Backend, args: argparse.Namespace) -> list[str]:
    base = f"http://127.0.0.1:{backend.web_port}"
    backend.decisions(100, 0)  # warm-up of the service
    api_load(base, backend.token, 2)  # and of the web service
    alone = backend.decisions(args.messages, 1_000_000)
    api_alone = api_load(base, backend.token, args.api_seconds)
    result: list[Latencies] = []
    running = threading.Event()
    started = time.perf_counter()
    loader = threading.Thread(
        target=lambda: result.append(api_load(base, backend.token, args.api_seconds * 3, running))
    )
    loader.start()
    running.wait()
    loaded = backend.decisions(args.messages, 2_000_000)
    within = time.perf_counter() - started < args.api_seconds * 3
    loader.join()
    api_both = result[0]
    return [
        f"== {backend.name}" + (f" (responder web at nice {backend.web_nice})" if backend.web_nice else ""),
        f"API alone, {CLIENTS} clients, {api_alone.seconds:.0f} s ({api_alone.errors} errors):",
        "  " + api_alone.line("GET"),
        "  " + api_alone.line("PUT"),
        f"responder serve alone:        {alone:7.1f} decisions/s ({args.messages} messages, 4 LMTP clients)",
        f"responder serve with the API: {loaded:7.1f} decisions/s ({loaded / alone:.0%} of alone)"
        + ("" if within else "  (the API load ended before the messages did)"),
        f"API meanwhile ({api_both.seconds:.0f} s, {api_both.errors} errors):",
        "  " + api_both.line("GET"),
        "  " + api_both.line("PUT"),
    ]


def _postgresql(server: str) -> tuple[str, str]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"responder_bench_{secrets.token_hex(4)}"
    engine = create_engine(make_url(server), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False), name


def _drop(server: str, name: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(server), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-seconds", type=float, default=15.0)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument(
        "--web-nice", type=int, default=0, help="run `responder web` at this nice value (systemd Nice=)"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "responder-web-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "sqlite" / "responder.sqlite3").unlink(missing_ok=True)
    backends: list[tuple[str, str, str | None]] = [
        ("sqlite", f"sqlite:///{args.work / 'sqlite' / 'responder.sqlite3'}", None)
    ]
    server = os.environ.get("RESPONDER_TEST_POSTGRESQL_URL")
    if server:
        url, name = _postgresql(server)
        backends.append(("postgresql", url, name))
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    try:
        for label, url, _ in backends:
            running = Backend(label, url, args.work, args.web_nice)
            try:
                running.start()
                print("\n".join(measure(running, args)), flush=True)
            finally:
                running.stop()
    finally:
        for _, _, database in backends:
            if server and database:
                _drop(server, database)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
