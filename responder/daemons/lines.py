"""One bounded line reader for both daemons: a line over the limit is dropped and reported, never held."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Reads more of the stream into Lines.buffer; False at its end. ``dropping``: in the middle of a line
# being dropped (the client is not idle then).
Fill = Callable[[bool], Awaitable[bool]]


class Lines:
    """Lines of at most ``limit`` bytes (LF included); what a client pipelines stays in ``buffer``.

    ``give_up``: a dropped line longer than this ends the reading (None: read it to its end).
    """

    def __init__(self, limit: int, give_up: int | None = None) -> None:
        self.limit = limit
        self.give_up = give_up
        self.buffer = bytearray()

    async def readline(self, fill: Fill) -> bytes | int:
        """The next line with its LF; the length of a line over the limit, which is dropped; or at the
        end of the stream, what is left (no LF)."""
        dropped = 0
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                if dropped or len(line) > self.limit:
                    return dropped + len(line)
                return line
            if len(self.buffer) > self.limit:
                dropped += len(self.buffer)
                self.buffer.clear()
                if self.give_up is not None and dropped > self.give_up:
                    return dropped
            if not await fill(bool(dropped)):
                rest = bytes(self.buffer)
                self.buffer.clear()
                return rest
