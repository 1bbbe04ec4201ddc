#!/usr/bin/env python3
"""Profile ``responder serve`` in this process while smtp-source -L drives it: where a message's time goes.

The service runs here under cProfile, every thread profiled (the event loop, the header threads and
the decision workers: a profiler of the main thread alone would miss the decisions), with the same
configuration, relay (smtp-sink) and load as ``bench/postfix_load.py``. It prints the functions with
the most time of their own and the most time under them, for one workload at a time:

    python3 bench/profile_service.py [--workload reply|no-vacation|list] [--messages 2000] [--top 25]

Times are CPU seconds of each thread (``time.thread_time``), not wall time: waiting for a lock, the
database or the relay costs nothing here, so what is listed is work. ``--save FILE`` keeps the merged
profile for ``python -m pstats FILE``. cProfile inflates the times; the shares are what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import postfix_load  # noqa: E402 - the sibling script, found through the path set just above

from responder.config.load import load  # noqa: E402 - the repository, not an installed copy
from responder.daemons.lmtp_service import Service  # noqa: E402
from responder.logsetup import setup_logging  # noqa: E402

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
    """The first profile event of a new thread: hand the thread over to a profiler of its own."""
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


class InProcess(postfix_load.Server):
    """The service of ``config`` on this process's main thread; ``socket`` for smtp-source."""

    name = "responder"

    def __init__(self, config: Path, socket: Path) -> None:
        self.config = config
        self.socket = socket

    def cpu(self) -> float:
        return postfix_load.tree_cpu(os.getpid())

    def rss(self) -> float:
        return postfix_load.tree_rss(os.getpid())


def drive(
    server: InProcess, sink: postfix_load.Sink, args: argparse.Namespace, ready: threading.Event
) -> None:
    try:
        ready.wait(60)
        warm = argparse.Namespace(**{**vars(args), "messages": 100})
        postfix_load.run_once(args.workload, server, sink, warm, postfix_load.Result())
        for profile in list(_profiles):
            # What the warm-up and the start cost is not a message's.
            profile.clear()
        result = postfix_load.Result()
        postfix_load.run_once(args.workload, server, sink, args, result)
        print(f"{args.workload}: {result.rate[0]:.0f} messages/s under the profiler", flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=postfix_load.WORKLOADS, default="reply")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="responder-profile-"))
    sink = postfix_load.Sink(args.work)
    # The configuration, database and vacation of the benchmark; its service process is not used.
    python = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
    made = postfix_load.Responder(args.work, python, sink, {"log": {"level": "warning"}})
    made.stop()
    settings = load(made.config)
    setup_logging(settings.log)
    server = InProcess(made.config, made.socket)
    ready = threading.Event()
    service = Service(made.config, settings)

    async def run() -> None:
        async def announce() -> None:
            while not made.socket.exists():
                await asyncio.sleep(0.01)
            ready.set()

        waiting = asyncio.get_running_loop().create_task(announce())
        await service.run()
        waiting.cancel()

    # Started before profiling is: the driver only waits for smtp-source.
    threading.Thread(target=drive, args=(server, sink, args, ready), daemon=True).start()
    threading.setprofile(_start_in_thread)
    main_profile = cProfile.Profile(time.thread_time)
    _profiles.append(main_profile)
    main_profile.enable()
    try:
        asyncio.run(run())
    finally:
        main_profile.disable()
        threading.setprofile(None)
        sink.stop()
    time.sleep(0.2)
    report(args)


def report(args: argparse.Namespace) -> None:
    """Every thread's profile merged, printed by own time and by time under."""
    out = io.StringIO()
    stats: pstats.Stats | None = None
    for profile in _profiles:
        profile.create_stats()
        if not profile.stats:
            continue  # a thread that ran nothing since the warm-up
        if stats is None:
            stats = pstats.Stats(profile, stream=out)
        else:
            stats.add(profile)
    if stats is None:
        raise SystemExit("nothing was profiled")
    if args.save:
        stats.dump_stats(str(args.save))
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        out.seek(0)
        out.truncate()
        stats.sort_stats(order).print_stats(args.top)
        print(f"--- {args.workload}: top {args.top} by {order} ---")
        print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
