"""Calls that tasks of one event loop make at the same moment, run together in one thread call."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batched(Generic[In, Out]):
    """``await batched(item)``: the answer of ``run`` for ``item``, run in ``call`` (a thread).

    An item that finds nothing under way goes at once, alone; items arriving while a call runs wait
    for it and then go together in the next one (a group commit: one transaction for a batch of a
    sender's writes). ``run`` answers one result per item, in order, or raises for the whole batch.
    """

    def __init__(
        self,
        run: Callable[[Sequence[In]], Sequence[Out]],
        call: Callable[[Callable[[Sequence[In]], Sequence[Out]], list[In]], asyncio.Future[Sequence[Out]]],
    ) -> None:
        self._run = run
        self._call = call
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Out] = loop.create_future()
        self._waiting.append((item, answer))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._call(self._run, [item for item, _ in batch])
                except Exception as exc:
                    for number, (_, answer) in enumerate(batch):
                        if not answer.done():
                            # Each waiter raises an object of its own (one would collect every traceback).
                            answer.set_exception(exc if number == 0 else copy.copy(exc))
                    continue
                for (_, answer), result in zip(batch, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self._task = None
            # Cancelled (the loop is closing): nobody is left waiting for an answer that never comes.
            for _, answer in batch + self._waiting:
                if not answer.done():
                    answer.cancel()
