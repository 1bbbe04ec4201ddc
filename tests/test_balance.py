"""The board of open connections and a shared listener: balanced, and never leaving a connection unserved."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.daemons.balance import FREE, SLOTS, Board, Seat
from responder.daemons.sockets import SharedListener


def test_the_board_counts_each_worker_and_forgets_one_that_left() -> None:
    board = Board()
    assert board.least() == 0  # nobody there yet
    first, second = Seat(board, 0), Seat(board, 1)
    first.opened()
    first.opened()
    second.opened()
    assert (board.least(), first.crowded(), second.crowded()) == (1, True, False)
    second.leave()
    second.closed()  # after leaving: no longer published
    assert (board.least(), first.crowded()) == (2, False)
    assert board.free_slot({0, 1, 2}) == 3
    assert board.free_slot(set(range(SLOTS))) is None
    board.set(0, FREE)
    assert board.least() == 0


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[socket.socket]:
    """A UNIX socket bound and listening, as the supervisor hands it to its workers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s.sock"))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hello\r\n")
    await reader.read()  # until the client closes
    writer.close()


async def _until_closed(seat: Seat) -> None:
    """Wait (up to 2 s) until the sessions end as their clients close."""
    for _ in range(200):
        if seat.open == 0:
            return
        await asyncio.sleep(0.01)


def test_a_crowded_worker_serves_what_nobody_else_takes(listening: socket.socket) -> None:
    # Slot 1 claims an idle worker that never accepts (a stuck one): the crowded worker must take
    # every connection after its moment of waiting, and count each one off when it closes.
    board = Board()
    board.set(1, 0)
    path = listening.getsockname()

    async def run() -> tuple[list[bytes], int]:
        seat = Seat(board, 0)
        listener = SharedListener(listening, _greet, seat)
        clients = [await asyncio.open_unix_connection(path) for _ in range(3)]
        greetings = [await asyncio.wait_for(reader.readline(), 10) for reader, _ in clients]
        open_at_peak = seat.open
        for _, writer in clients:
            writer.close()
        await _until_closed(seat)
        listener.close()
        assert (seat.open, seat.left) == (0, True)
        return greetings, open_at_peak

    greetings, peak = asyncio.run(run())
    assert greetings == [b"220 hello\r\n"] * 3
    assert peak == 3


def test_a_worker_whose_connection_closes_takes_the_one_it_left_at_once(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers can each leave a connection to the other, their counts having changed in between;
    # neither may then sit out its whole wait. Here the wait is long: the test fails if it is sat out.
    monkeypatch.setattr(SharedListener, "_YIELD", 60.0)
    board = Board()
    board.set(1, 0)  # another worker, idle and not taking the connection
    path = listening.getsockname()

    async def run() -> bytes:
        seat = Seat(board, 0)
        listener = SharedListener(listening, _greet, seat)
        first_reader, first_writer = await asyncio.open_unix_connection(path)
        await asyncio.wait_for(first_reader.readline(), 10)
        second_reader, second_writer = await asyncio.open_unix_connection(path)  # left to the other
        await asyncio.sleep(0.2)
        assert seat.open == 1
        first_writer.close()  # this worker is no longer the busier one
        greeting = await asyncio.wait_for(second_reader.readline(), 10)
        second_writer.close()
        await _until_closed(seat)
        listener.close()
        return greeting

    assert asyncio.run(run()) == b"220 hello\r\n"
