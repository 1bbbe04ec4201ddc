"""``responder serve`` with ``server.processes`` > 1: bind once, fork the workers, replace those that die.

The supervisor binds the listening socket before forking, so that every worker (its own event loop,
engine and outbox sender) accepts on it, new connections going to the worker with the fewest
(``responder.daemons.balance``). A worker that dies is replaced; the connections it had are
dropped (the MTA retries them), and the supervisor frees what it held in the database at once: its
outbox leases (a response it was sending before the final dot is sent again; one it had written the
final dot of is counted as sent) and its interval claims not yet committed. SIGHUP loads the
configuration again and replaces the workers one by one, each new one ready before an old one is
told to stop; a configuration that does not load keeps the workers running and is logged. SIGTERM
(and SIGINT) stop all workers, which finish their messages first, and exit 0.

Hooks for other parts of the service (all run synchronously, exceptions logged):
``BEFORE_FIRST_FORK`` in the supervisor before any worker exists, ``IN_WORKER`` in each new worker
right after the fork, ``ON_WORKER_EXIT`` in the supervisor with the pid of every worker that ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from responder.config.load import ConfigError, load
from responder.daemons import sockets
from responder.daemons.balance import FREE, Board, Seat
from responder.logsetup import setup_logging

if TYPE_CHECKING:
    from pathlib import Path

    from responder.config.settings import Settings

log = logging.getLogger("responder")

BEFORE_FIRST_FORK: list[Callable[[], None]] = []
IN_WORKER: list[Callable[[], None]] = []
ON_WORKER_EXIT: list[Callable[[int], None]] = []

# How long a new worker may take to warm up (database, templates) before it counts as failed.
READY_TIMEOUT = 120.0
# Workers that die at once are replaced no faster than this: a crash loop must not spin.
RESPAWN_PAUSE = 1.0
# The longest wait for the database lock when freeing a dead worker's leases and claims.
FREE_WAIT = 2.0
# After server.stop_timeout, this long for the workers to close before they are killed.
STOP_SLACK = 10.0


@dataclass
class Worker:
    pid: int
    # Its place on the board of open connections (None: all taken, it accepts unbalanced).
    slot: int | None
    key: str
    started: float
    ready_fd: int


def _run_hooks(hooks: list[Callable[..., None]], *args: object) -> None:
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.exception("hook %r failed", hook)


class Supervisor:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        from responder.daemons.lmtp_service import ServeError

        if settings.server.socket is None:
            raise ServeError("server.socket is not set: nothing to listen on")
        self.config_path = config_path
        self.settings = settings
        self.spec = settings.server.socket
        self.workers: dict[int, Worker] = {}
        # Told to stop (after a reload, or at the end): not replaced when they exit.
        self.retiring: dict[int, Worker] = {}
        self.listeners: list[socket.socket] = []
        self.flags: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        self.last_spawn = 0.0
        self.board = Board()

    # -- the supervisor's loop ------------------------------------------------------------------

    def run(self) -> None:
        from responder.daemons.lmtp_service import ServeError

        try:
            self.listeners = sockets.bind_for_workers(self.spec, self.settings.server.socket_mode)
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.spec}: {exc.strerror or exc}") from None
        os.set_blocking(self.wake_w, False)
        previous_fd = signal.set_wakeup_fd(self.wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        try:
            _run_hooks(BEFORE_FIRST_FORK)
            for _ in range(self.settings.server.process_count):
                self._start_ready(self.settings)
            server = self.settings.server
            log.info(
                "listening for LMTP on %s (processes=%d, workers=%d)",
                self.spec,
                server.process_count,
                server.workers,
            )
            self._loop()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for listener in self.listeners:
                listener.close()
            sockets.unlink(self.spec)
        log.info("stopped")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.flags.add(signum)

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)

    def _loop(self) -> None:
        while True:
            self._wait(1.0)
            self._reap()
            flags, self.flags = self.flags, set()
            if signal.SIGTERM in flags or signal.SIGINT in flags:
                self._stop_all()
                return
            if signal.SIGHUP in flags:
                self._reload()
            self._replace_missing()

    # -- workers --------------------------------------------------------------------------------

    def _spawn(self, settings: Settings) -> Worker:
        key = secrets.token_hex(4)
        taken = {w.slot for w in [*self.workers.values(), *self.retiring.values()] if w.slot is not None}
        slot = self.board.free_slot(taken)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                self._become_worker(settings, key, ready_w, slot)
                code = 0
            except BaseException:
                log.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        worker = Worker(pid, slot, key, time.monotonic(), ready_r)
        self.workers[pid] = worker
        self.last_spawn = worker.started
        return worker

    def _become_worker(self, settings: Settings, key: str, ready_w: int, slot: int | None) -> None:
        from responder.daemons.lmtp_service import Service, run_worker

        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for other in list(self.workers.values()) + list(self.retiring.values()):
            with contextlib.suppress(OSError):
                os.close(other.ready_fd)
        _run_hooks(IN_WORKER)

        def ready() -> None:
            os.write(ready_w, b"1")
            os.close(ready_w)

        seat = Seat(self.board, slot) if slot is not None else None
        run_worker(Service(self.config_path, settings, self.listeners, key, ready, seat))

    def _start_ready(self, settings: Settings) -> bool:
        """Start one worker and wait until it accepts; False (logged) when it died or never got ready."""
        worker = self._spawn(settings)
        deadline = worker.started + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if os.read(worker.ready_fd, 1):
                    os.close(worker.ready_fd)
                    worker.ready_fd = -1
                    return True
                break  # closed without a word: the worker ended
            except BlockingIOError:
                pass
            ready, _, _ = select.select([worker.ready_fd, self.wake_r], [], [], 0.5)
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
        log.error("worker %d did not get ready", worker.pid)
        with contextlib.suppress(OSError):
            os.close(worker.ready_fd)
        worker.ready_fd = -1
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
        self.retiring[worker.pid] = self.workers.pop(worker.pid)
        return False

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            retired = pid in self.retiring
            worker = self.workers.pop(pid, None) or self.retiring.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(worker.ready_fd)
            if worker.slot is not None:
                self.board.set(worker.slot, FREE)  # a killed worker could not say it left
            clean = retired and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if not retired:
                log.error("worker %d ended (%s): replacing it", pid, _describe(status))
            if not clean:
                # A worker that stopped cleanly gave back its own leases (or left them to expire).
                self._free(worker)
            _run_hooks(ON_WORKER_EXIT, pid)

    def _free(self, worker: Worker) -> None:
        """What a worker that is gone held in the database: it can never commit or send it now."""
        from responder.decide.context import utcnow
        from responder.errors import StoreUnavailable
        from responder.store.database import Store

        database = self.settings.database
        try:
            # Briefly: the supervisor must not hang on a locked database; the leases expire anyway.
            store = Store.open(database.url, min(database.busy_timeout, FREE_WAIT))
        except StoreUnavailable as exc:
            log.warning("worker %d's outbox leases expire on their own: %s", worker.pid, exc)
            return
        try:
            freed = store.release_leases(worker.key, utcnow())
            if freed:
                log.info("freed %d outbox responses of worker %d", freed, worker.pid)
        except StoreUnavailable as exc:
            log.warning("worker %d's outbox leases expire on their own: %s", worker.pid, exc)
        finally:
            store.close()

    def _replace_missing(self) -> None:
        missing = self.settings.server.process_count - len(self.workers)
        if missing <= 0 or time.monotonic() - self.last_spawn < RESPAWN_PAUSE:
            return
        self._start_ready(self.settings)

    def _reload(self) -> None:
        try:
            settings = load(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, the running workers stay: %s", exc)
            return
        if settings.server.socket != self.spec:
            log.warning(
                "server.socket changed to %s: restart the service to listen there", settings.server.socket
            )
        setup_logging(settings.log)
        old = list(self.workers.values())
        started = 0
        for _ in range(settings.server.process_count):
            if not self._start_ready(settings):
                break
            started += 1
            if old:
                self._retire(old.pop(0))
        if started == 0:
            log.error("reload failed: no worker started with the new configuration; the old ones stay")
            return
        for worker in old:
            self._retire(worker)
        self.settings = settings
        log.info("configuration reloaded from %s", self.config_path)

    def _retire(self, worker: Worker) -> None:
        self.retiring[worker.pid] = self.workers.pop(worker.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        log.info("stopping: the workers finish the messages in flight")
        # No new connections from here on: the workers close their copies of the socket as they stop.
        for listener in self.listeners:
            listener.close()
        sockets.unlink(self.spec)
        for worker in list(self.workers.values()):
            self._retire(worker)
        deadline = time.monotonic() + self.settings.server.stop_timeout + STOP_SLACK
        while self.retiring and time.monotonic() < deadline:
            self._wait(0.2)
            self._reap()
        for pid in list(self.retiring):
            log.warning("worker %d still running after stop_timeout: killed", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.retiring:
            self._wait(0.2)
            self._reap()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
