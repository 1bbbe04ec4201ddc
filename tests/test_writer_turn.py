"""SQLite write turns across the service's processes: held off while another holds it, freed by a kill."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

from responder.store.database import Store
from responder.store.writer_lock import LOCK_SUFFIX, WriterTurn
from tests.helpers import run_admin, write_config

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
HOLDER = """
import sys, time
from responder.store.writer_lock import WriterTurn
turn = WriterTurn(sys.argv[1])
assert turn.acquire(5)
print("held", flush=True)
time.sleep(60)
"""


def _held_elsewhere(path: Path) -> bool:
    """Whether another open file holds the lock, asked without waiting."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_turn_held_by_another_process_waits_and_is_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    lock = tmp_path / ("responder.sqlite3" + LOCK_SUFFIX)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert _held_elsewhere(lock)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # The kernel freed the dead holder's lock: this process gets the turn, and holds it.
        turn = WriterTurn(str(lock))
        assert turn.acquire(5)
        assert _held_elsewhere(lock)
        turn.release()
        assert not _held_elsewhere(lock)
        turn.close()
    finally:
        holder.kill()
        holder.communicate()


def test_a_nested_turn_keeps_the_file_until_the_outermost_release(tmp_path: Path) -> None:
    lock = tmp_path / "db.lock"
    turn = WriterTurn(str(lock))
    assert turn.acquire(1) and turn.acquire(1)
    turn.release()
    assert _held_elsewhere(lock)
    turn.release()
    assert not _held_elsewhere(lock)
    turn.close()


def test_closing_does_not_wait_for_a_writer_that_still_holds_the_turn(tmp_path: Path) -> None:
    lock = tmp_path / "db.lock"
    turn = WriterTurn(str(lock))
    held, done = threading.Event(), threading.Event()

    def writer() -> None:
        assert turn.acquire(1)
        held.set()
        done.wait(10)
        turn.release()

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(10)
    turn.close()  # returns at once: the writer keeps its turn
    assert _held_elsewhere(lock)
    done.set()
    thread.join(10)
    assert not _held_elsewhere(lock)
    turn.close()


def test_without_room_for_the_lock_file_the_turn_is_the_processs_own(tmp_path: Path) -> None:
    turn = WriterTurn(str(tmp_path / "missing" / "db.lock"))
    assert turn.acquire(1)
    turn.release()
    assert not (tmp_path / "missing").exists()


def test_the_service_store_takes_turns_on_a_lock_file_readable_as_the_database(tmp_path: Path) -> None:
    database = tmp_path / "responder.sqlite3"
    config = write_config(tmp_path / "responder.toml", {"database": {"url": f"sqlite:///{database}"}})
    assert run_admin(config, "db", "upgrade").returncode == 0
    database.chmod(0o640)
    lock = Path(str(database) + LOCK_SUFFIX)
    assert not lock.exists()  # the admin command's store takes no part
    store = Store.open(f"sqlite:///{database}", pooled=True)
    try:
        store.put_vacation("alice@example.com", NOW, None, enabled=True, message="Away.", timezone="UTC")
    finally:
        store.close()
    assert stat.S_IMODE(lock.stat().st_mode) == 0o440 & ~_umask()
    assert not _held_elsewhere(lock)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
