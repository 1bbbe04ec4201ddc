"""Policy server requests per second and latency, over many connections, as smtpd processes use it.

Not a test: it measures. It starts ``responder policy`` as its own process on a UNIX socket, with a
database (a temporary SQLite file by default, or ``--database-url``, which must be migrated and is
left as found apart from the retired addresses this adds and removes) holding ``--retired`` retired
addresses, then opens ``--connections`` connections that each send ``--requests`` Postfix RCPT
requests one after the other (as each smtpd process does), half of them for retired recipients.
Every answer is checked.

    python bench/policy.py --connections 50 --requests 200
    python bench/policy.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder.store.database import Store
from tests.policytools import encode, postfix_request

DOMAIN = "bench.example"


def _address(number: int) -> str:
    return f"retired{number}@{DOMAIN}"


async def _client(path: str, number: int, requests: int, retired: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        for i in range(requests):
            hit = (number + i) % 2 == 0
            recipient = _address((number * requests + i) % retired) if hit else f"user{i}@{DOMAIN}"
            began = time.perf_counter()
            writer.write(encode(postfix_request(recipient)))
            answer = await reader.readuntil(b"\n\n")
            latencies.append(time.perf_counter() - began)
            expected = b"action=REJECT 5.1.6 " if hit else b"action=DUNNO\n"
            if not answer.startswith(expected):
                raise AssertionError(f"{recipient}: {answer!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def _load(path: str, connections: int, requests: int, retired: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    began = time.perf_counter()
    await asyncio.gather(*(_client(path, n, requests, retired, latencies) for n in range(connections)))
    return time.perf_counter() - began, latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200, help="per connection")
    parser.add_argument("--retired", type=int, default=1000, help="retired addresses in the database")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rp-bench-") as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.sqlite3"
        store = Store.open(url)
        if not args.database_url:
            store.upgrade()
        now = dt.datetime.now(dt.UTC)
        for n in range(args.retired):
            store.put_retirement(
                _address(n), now, message="Gone; write to office@example.", status="5.1.6", timezone="UTC"
            )
        config = Path(tmp) / "responder.toml"
        config.write_text(f'[database]\nurl = "{url}"\n[log]\nlevel = "warning"\n')
        socket_path = f"{tmp}/policy.sock"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "responder",
                "--config",
                str(config),
                "policy",
                "--listen",
                f"unix:{socket_path}",
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(socket_path):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the policy server did not start")
                time.sleep(0.05)
            elapsed, latencies = asyncio.run(
                _load(socket_path, args.connections, args.requests, args.retired)
            )
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
            for n in range(args.retired):
                store.delete_retirement(_address(n))
            store.close()
    total = len(latencies)
    cuts = statistics.quantiles(latencies, n=100)
    backend = re.sub(r"://.*", "", url)
    print(
        f"{backend}: {total} requests over {args.connections} connections in {elapsed:.2f}s: "
        f"{total / elapsed:.0f} requests/s; latency p50 {cuts[49] * 1000:.1f} ms, "
        f"p99 {cuts[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; server exit {code}"
    )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
