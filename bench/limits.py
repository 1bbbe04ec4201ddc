"""Rate-limit decisions per second with concurrent processes, on SQLite, PostgreSQL and MariaDB.

Not a test: it measures. Each backend gets a fresh database (a temporary SQLite file, or a database
``responder_bench_<random>`` on the server, dropped afterwards) and three runs of N processes:

- ``decide``:  the whole rule table for a message that will be answered (vacation lookup, interval
               claim, the four limits read and counted), then the claims confirmed as after a send;
- ``limits``:  the rate-limit rule alone, counted and confirmed;
- ``tripped``: the global limit already reached: the flood case, refused after one read.

At the end the global counter must equal the number of counted decisions, or the run fails.

    python bench/limits.py --backend all --processes 16 --seconds 10 \\
        --postgresql-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --mysql-url mysql+pymysql://root@127.0.0.1:3306/test
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder.config.load import settings_from_mapping
from responder.config.settings import Settings
from responder.decide.context import Context, Services
from responder.decide.engine import decide
from responder.decide.limits import check_limits
from responder.mail.message import Envelope, Inbound
from responder.store.database import Store
from responder.store.schema import rate_counters

RECIPIENTS = [f"user{i}@example.com" for i in range(200)]
SENDERS = [f"sender{i}@domain{i % 300}.example" for i in range(20_000)]
HIGH = "100000000/1h"


def _settings(url: str, scenario: str) -> Settings:
    limits = {"per_sender": HIGH, "per_sender_domain": HIGH, "per_recipient": HIGH, "global": HIGH}
    if scenario == "tripped":
        limits["global"] = "1/1h"
    return settings_from_mapping(
        {
            "database": {"url": url},
            "verify": {"require": "off"},
            "reply": {"min_interval": "0s", "default_interval": "0s"},
            "limits": limits,
        }
    )


def _inbound(number: int) -> Inbound:
    sender = SENDERS[number % len(SENDERS)]
    recipient = RECIPIENTS[number % len(RECIPIENTS)]
    raw = (
        f"From: {sender}\nTo: {recipient}\nSubject: bench\nMessage-ID: <b{number}.{os.getpid()}@x>\n\nhi\n"
    ).encode()
    return Inbound(Envelope(sender, recipient), raw)


def _worker(url: str, scenario: str, seconds: float, seed: int, start: Any, results: Any) -> None:
    services = Services(_settings(url, scenario))
    store = services.store  # connect and check the schema before the clock starts
    number = seed * 1_000_003
    start.wait()
    decisions = counted = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        number += 1
        ctx = Context(_inbound(number), services)
        if scenario == "decide":
            outcome = decide(ctx)
            sent = outcome.outgoing is not None
        else:
            sent = check_limits(ctx) is None
        for claim in ctx.claims:
            claim.confirm() if sent else claim.release()
        decisions += 1
        counted += sent
    store.close()
    results.put((decisions, counted))


@contextmanager
def _database(kind: str, server: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    assert server is not None
    admin = create_engine(make_url(server), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"responder_bench_{secrets.token_hex(4)}"
    extra = " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if kind == "mysql" else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}{extra}")
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


def _prepare(url: str, scenario: str) -> None:
    store = Store.open(url)
    store.upgrade()
    now = dt.datetime.now(dt.UTC)
    if not store.vacation_for(RECIPIENTS[:1]):
        for address in RECIPIENTS:
            store.put_vacation(
                address, now, None, enabled=True, message="away", timezone="UTC", interval_seconds=0
            )
    store.reset_counters([])
    if scenario == "tripped":
        # Fill the global counter: every decision in the run meets a reached limit.
        services = Services(_settings(url, scenario), store=store)
        ctx = Context(_inbound(0), services)
        assert check_limits(ctx) is None
        for claim in ctx.claims:
            claim.confirm()
    store.close()


def _global_count(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        c = rate_counters.c
        total = conn.execute(select(c["count"]).where(c.scope == "global")).scalars().all()
    engine.dispose()
    return sum(total)


def run(kind: str, server: str | None, processes: int, seconds: float) -> None:
    with _database(kind, server) as url:
        for scenario in ("decide", "limits", "tripped"):
            _prepare(url, scenario)
            before = _global_count(url)
            start = mp.Barrier(processes)
            queue: Any = mp.Queue()
            workers = [
                mp.Process(target=_worker, args=(url, scenario, seconds, seed, start, queue))
                for seed in range(processes)
            ]
            for worker in workers:
                worker.start()
            results = [queue.get(timeout=seconds + 120) for _worker in workers]
            for worker in workers:
                worker.join()
            decisions = sum(d for d, _c in results)
            counted = sum(c for _d, c in results)
            check = _global_count(url) - before
            if check != counted:
                raise SystemExit(f"{kind} {scenario}: global counter {check}, counted decisions {counted}")
            print(
                f"{kind:10} {scenario:8} {processes:3} processes  {decisions / seconds:8.0f} decisions/s"
                f"  ({decisions} in {seconds:g}s, {counted} counted)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mysql", "all"), default="all")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgresql-url", default=os.environ.get("RESPONDER_TEST_POSTGRESQL_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("RESPONDER_TEST_MYSQL_URL"))
    args = parser.parse_args()
    # The circuit breaker's warning, once per window, shows in the tripped run.
    logging.basicConfig(format="  log: %(message)s")
    servers = {"sqlite": None, "postgresql": args.postgresql_url, "mysql": args.mysql_url}
    kinds = list(servers) if args.backend == "all" else [args.backend]
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    for kind in kinds:
        if kind != "sqlite" and not servers[kind]:
            print(f"{kind:10} skipped: give --{kind}-url (or RESPONDER_TEST_{kind.upper()}_URL)")
            continue
        run(kind, servers[kind], args.processes, args.seconds)


if __name__ == "__main__":
    main()
