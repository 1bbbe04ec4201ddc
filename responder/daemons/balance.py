"""The workers' open connections side by side in shared memory, so that a new one goes to the least busy."""

from __future__ import annotations

import mmap
from collections.abc import Callable

SLOTS = 256
FREE = -1  # no worker there, or one that no longer accepts


class Board:
    """One 32-bit count per worker slot, in memory the supervisor maps before it forks.

    Each word is written by one process only (the worker in that slot, or the supervisor once that
    worker is gone) and read whole, so no lock is needed: a count a moment old only makes a worker
    take a connection that another might have taken.
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, SLOTS * 4)  # anonymous and shared: the workers see one copy
        self._counts = memoryview(self._memory).cast("i")
        for slot in range(SLOTS):
            self._counts[slot] = FREE

    def free_slot(self, taken: set[int]) -> int | None:
        """A slot for a new worker: none of ``taken`` (the live workers'); None when all are."""
        return next((slot for slot in range(SLOTS) if slot not in taken), None)

    def set(self, slot: int, count: int) -> None:
        self._counts[slot] = count

    def least(self) -> int:
        """The fewest connections a worker that accepts has (0 when none says)."""
        return min((count for count in self._counts if count != FREE), default=0)


class Seat:
    """A worker's slot on the board and its count of open connections, over all of its listeners."""

    def __init__(self, board: Board, slot: int) -> None:
        self.board = board
        self.slot = slot
        self.open = 0
        self.left = False
        # Called when a connection here closes: a listener leaving connections to the others
        # takes them again at once if this worker is no longer the busier one.
        self.on_closed: list[Callable[[], None]] = []
        board.set(slot, 0)

    def opened(self) -> None:
        self.open += 1
        self._publish()

    def closed(self) -> None:
        self.open -= 1
        self._publish()
        for wake in self.on_closed:
            wake()

    def crowded(self) -> bool:
        """More open connections here than at the least busy worker."""
        return self.open > self.board.least()

    def leave(self) -> None:
        """This worker accepts no more: the others stop leaving connections to it."""
        self.left = True
        self.board.set(self.slot, FREE)

    def _publish(self) -> None:
        if not self.left:
            self.board.set(self.slot, self.open)
