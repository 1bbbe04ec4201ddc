"""Failed sign-ins counted per account and per client address in a sliding window, in memory."""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

from responder.config.values import Limit

# Keys remembered at most: a flood of made-up addresses cannot grow the table without bound.
MAX_KEYS = 100_000


class Throttled(Exception):
    """Too many failed sign-ins; try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after} seconds")
        self.retry_after = retry_after


class _Window:
    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.failures: OrderedDict[str, deque[dt.datetime]] = OrderedDict()

    def _recent(self, key: str, now: dt.datetime) -> deque[dt.datetime]:
        times = self.failures.get(key)
        if times is None:
            return deque()
        horizon = now - dt.timedelta(seconds=self.limit.window)
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.failures[key]
        return times

    def retry_after(self, key: str, now: dt.datetime) -> int:
        times = self._recent(key, now)
        if len(times) < self.limit.count:
            return 0
        free_at = times[len(times) - self.limit.count] + dt.timedelta(seconds=self.limit.window)
        return max(1, math.ceil((free_at - now).total_seconds()))

    def add(self, key: str, now: dt.datetime) -> None:
        times = self.failures.setdefault(key, deque(maxlen=self.limit.count))
        times.append(now)
        self.failures.move_to_end(key)
        while len(self.failures) > MAX_KEYS:
            self.failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)


class SignInThrottle:
    """Refuses a sign-in before the password is checked once an account or a client failed too often.

    Per process: each `responder web` counts its own failures (several behind a balancer each allow
    the limit). A success clears the account's failures, not the client's.
    """

    def __init__(self, per_account: Limit, per_client: Limit, clock: Callable[[], dt.datetime]) -> None:
        self._account = _Window(per_account)
        self._client = _Window(per_client)
        self._clock = clock
        self._lock = threading.Lock()

    def check(self, account: str, client: str) -> None:
        now = self._clock()
        with self._lock:
            wait = max(self._account.retry_after(account, now), self._client.retry_after(client, now))
        if wait:
            raise Throttled(wait)

    def failed(self, account: str, client: str) -> None:
        now = self._clock()
        with self._lock:
            self._account.add(account, now)
            self._client.add(client, now)

    def succeeded(self, account: str) -> None:
        with self._lock:
            self._account.clear(account)
