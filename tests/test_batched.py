"""The outbox sender's shared writes: items of one moment in one call, each answered, faults to all."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from responder.daemons.batched import Batched
from responder.errors import StoreUnavailable


class Held:
    """A run that holds its first call until released, so that the items after it queue up."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail:
            raise StoreUnavailable("database unavailable while testing")
        return [item * 10 for item in items]


def _in_thread(executor: ThreadPoolExecutor) -> Callable[..., asyncio.Future[Any]]:
    def call(run: Callable[..., Any], *args: object) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(executor, run, *args)

    return call


async def _queue_behind_first(batched: Batched[int, int], run: Held, count: int) -> list[asyncio.Task[int]]:
    first = asyncio.create_task(batched(0))
    await asyncio.to_thread(run.entered.wait, 10)
    rest = [asyncio.create_task(batched(n)) for n in range(1, count)]
    await asyncio.sleep(0)  # every waiter is queued before the first call ends
    run.release.set()
    return [first, *rest]


def test_items_arriving_during_a_call_share_the_next_and_each_gets_its_own_answer() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        run = Held()
        with ThreadPoolExecutor(2) as executor:
            batched: Batched[int, int] = Batched(run, _in_thread(executor))
            tasks = await _queue_behind_first(batched, run, 6)
            answers = list(await asyncio.gather(*tasks))
            # Nothing under way: the next item goes at once, alone.
            answers.append(await batched(7))
        return answers, run.calls

    answers, calls = asyncio.run(main())
    assert answers == [0, 10, 20, 30, 40, 50, 70]
    assert calls == [[0], [1, 2, 3, 4, 5], [7]]


def test_a_fault_reaches_every_waiter_with_an_exception_of_its_own() -> None:
    async def main() -> list[BaseException | int]:
        run = Held(fail=True)
        with ThreadPoolExecutor(2) as executor:
            batched: Batched[int, int] = Batched(run, _in_thread(executor))
            tasks = await _queue_behind_first(batched, run, 4)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = asyncio.run(main())
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    assert len({id(o) for o in outcomes}) == len(outcomes)


def test_waiters_are_cancelled_with_the_batch_not_left_hanging() -> None:
    async def main() -> tuple[bool, bool]:
        run = Held()
        with ThreadPoolExecutor(2) as executor:
            batched: Batched[int, int] = Batched(run, _in_thread(executor))
            first = asyncio.create_task(batched(0))
            await asyncio.to_thread(run.entered.wait, 10)
            second = asyncio.create_task(batched(1))
            await asyncio.sleep(0)
            assert batched._task is not None
            batched._task.cancel()
            results = await asyncio.gather(first, second, return_exceptions=True)
            run.release.set()
        return tuple(isinstance(r, asyncio.CancelledError) for r in results)  # type: ignore[return-value]

    assert asyncio.run(main()) == (True, True)
