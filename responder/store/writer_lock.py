"""The SQLite file's write turn, shared by the threads of a process and, on request, by its processes."""

from __future__ import annotations

import fcntl
import os
import threading


class WriterTurn:
    """One writer at a time: ``acquire`` waits in line, ``release`` hands on.

    ``acquire`` answers False when the other threads of this process held the turn past ``timeout``.

    SQLite has one writer at a time, and a writer that finds the file locked sleeps in its busy
    handler, 1 ms first and up to 100 ms: two service processes writing a few times per message each
    lose most of their time there. Threads of one process queue on a lock and are woken as soon as
    the writer before them is done; with ``lock_path``, processes take turns on an flock(2) of that
    file, held for one transaction, which the kernel frees should its holder be killed. Writers that
    do not take part (a pipe hook) still meet SQLite's own lock, as before.
    """

    def __init__(self, lock_path: str | None = None) -> None:
        self._threads = threading.RLock()
        self._depth = 0
        self._path = lock_path
        self._fd = -1
        self._pid = 0

    def acquire(self, timeout: float) -> bool:
        if not self._threads.acquire(timeout=timeout):
            return False
        if self._depth == 0 and self._path is not None:
            self._lock_file()
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        # A writer still waiting in SQLite's busy handler (given up by a stopping service) keeps the
        # turn; closing must not wait for it: its descriptor goes with the process.
        if not self._threads.acquire(blocking=False):
            return
        try:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
        finally:
            self._threads.release()

    def _lock_file(self) -> None:
        fd = self._open()
        if fd >= 0:
            # Waited for in the kernel, which wakes the next in line at once (polling, as SQLite's
            # busy handler does, costs a pause per look). The wait is bounded by the writers ahead:
            # one thread per process, each holding the file for one transaction, whose statements
            # are bounded by busy_timeout.
            fcntl.flock(fd, fcntl.LOCK_EX)

    def _open(self) -> int:
        # Opened in each process: a descriptor inherited across fork is one lock for both processes.
        if self._fd < 0 or self._pid != os.getpid():
            assert self._path is not None
            self._pid = os.getpid()
            try:
                self._fd = os.open(
                    self._path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, _mode_of_database(self._path)
                )
            except OSError:
                # A directory this user may not create files in: SQLite's own lock still serialises.
                self._fd, self._path = -1, None
        return self._fd


def _mode_of_database(lock_path: str) -> int:
    """The lock file is readable by whoever may read the database, and writable by nobody."""
    try:
        mode = os.stat(lock_path.removesuffix(LOCK_SUFFIX)).st_mode
    except OSError:
        return 0o600
    return mode & 0o444


# The lock file's name: the database file's with this suffix, beside SQLite's own -wal and -shm files.
LOCK_SUFFIX = ".lock"
