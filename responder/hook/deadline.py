"""The pipe hook's time limit: DeadlineExceeded at deliver.deadline, the process gone at deadline + MARGIN.

Postfix kills a pipe command that outlives ``command_time_limit`` and bounces the message, so the hook
must end first, with 75 or with 0, whatever it is waiting for. Two layers make sure of it:

- the *soft* deadline, a SIGALRM that raises DeadlineExceeded in the main thread at ``deliver.deadline``,
  so that the engine gives back what it took and the hook defers with its usual log line;
- the *backstop*, a thread that ends the process with ``os._exit`` at ``deliver.deadline + MARGIN``:
  the soft deadline is an exception the main thread meets only between bytecodes and only once, and
  the clean-up after it (giving back claims, the audit row) talks to the same database that may have
  stopped answering. The backstop waits for nobody.

Both count from the start of the hook (``HookDeadline``'s creation), not from when they were armed.
Until ``settle()`` the backstop's status is 75; once the decision is made and nothing owed is left (a
suppression or a drop, or a response the relay took), it is 0, and the soft deadline no longer strikes:
what remains (confirming a claim, the audit row) may be lost, the decision may not be made twice.
Only ``_thread``, ``os`` and ``time`` are imported: the header path of the hook runs under it too.
"""

from __future__ import annotations

import _thread
import os
import time

from responder.errors import DeadlineExceeded, ExitCode

# typing.TYPE_CHECKING without importing typing (which imports re): mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# Seconds past deliver.deadline by which a hook process has certainly ended (documented in the README):
# the time the deferral's clean-up gets after the soft deadline. Postfix's command_time_limit (1000 s for
# pipe) must be longer than deliver.deadline + MARGIN; a pending claim is older than that only when
# its owner is gone.
MARGIN = 5.0
# config.DeliverSettings.deadline's default (a test compares them): the limit until the hook has read
# its configuration.
DEFAULT_DEADLINE = 60.0
# How long the backstop lets its last log line take before it ends the process regardless.
LAST_LINE_WAIT = 0.5


def _stderr(line: str) -> None:
    # os.write, not sys.stderr: the main thread may hold the stream's lock; logsetup's format. With
    # descriptor 2 closed the line is lost: the exit status matters more.
    try:  # noqa: SIM105 - contextlib is not imported on the thin client's path
        os.write(2, f"responder[{os.getpid()}]: ERROR {line}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


class HookDeadline:
    """The time limit of one hook process; ``backstop=False`` (in-process callers) keeps only the soft one."""

    def __init__(self, deadline: float = DEFAULT_DEADLINE, backstop: bool = True) -> None:
        self.started = time.monotonic()
        self.deadline = deadline
        self.status = ExitCode.EX_TEMPFAIL
        # For the backstop's line: whose delivery (queue id, envelope) and what was decided.
        self.subject = ""
        self.decision = ""
        # Where the backstop's line goes: stderr until the hook has set up its log (then also syslog).
        self.say: Callable[[str], None] = _stderr
        self._backstop = backstop
        self._stop: _thread.LockType | None = None
        self._soft = False
        self.arm(deadline)

    @property
    def settled(self) -> bool:
        return self.status == ExitCode.EX_OK

    def remaining(self) -> float:
        """Seconds until the soft deadline (negative once it has passed)."""
        return self.started + self.deadline - time.monotonic()

    def until_end(self) -> float:
        """Seconds until the backstop ends the process."""
        return self.remaining() + MARGIN

    def arm(self, deadline: float) -> None:
        """(Re)start the backstop for ``deadline``, still counted from the hook's start."""
        self.deadline = deadline
        self.cancel()
        if not self._backstop:
            return
        stop = _thread.allocate_lock()
        stop.acquire()
        self._stop = stop
        _thread.start_new_thread(self._watch, (stop, self.started + deadline + MARGIN))

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.release()
            self._stop = None

    def name(self, envelope: Mapping[str, str]) -> None:
        """Whose delivery this is, for the backstop's line, named as the decision line names it."""
        queue_id, sender, recipient = envelope["queue_id"] or "-", envelope["sender"], envelope["recipient"]
        self.subject = f"queue_id={queue_id} sender=<{sender}> recipient=<{recipient}>"

    def settle(self, action: str, reason: str | None) -> None:
        """The decision is made and nothing owed is left: from now on the hook ends with 0."""
        self.decision = f"{action}, reason {reason or '-'}"
        self.status = ExitCode.EX_OK
        if self._soft:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)

    def soft(self) -> _Soft:
        """Raise DeadlineExceeded in the main thread when the deadline passes, unless settled by then."""
        return _Soft(self)

    def _watch(self, stop: _thread.LockType, end: float) -> None:
        while (left := end - time.monotonic()) > 0:
            if stop.acquire(timeout=min(left, _thread.TIMEOUT_MAX)):
                return  # cancelled, or armed again
        self._expire()

    def _expire(self) -> None:
        status = self.status
        outcome = (
            f"exiting 0 after the decision ({self.decision}); its claim confirmation or audit row is lost"
            if status == ExitCode.EX_OK
            else "deferring (exit 75)"
        )
        line = f"{self.subject} still running at deliver.deadline {self.deadline:g}s + {MARGIN:g}s; {outcome}"
        said = _thread.allocate_lock()
        said.acquire()
        _thread.start_new_thread(self._last_line, (line, said))
        # The line goes through the hook's log (syslog too), which the stuck main thread may be holding.
        if not said.acquire(timeout=LAST_LINE_WAIT):
            _stderr(line)
        os._exit(status)

    def _last_line(self, line: str, said: _thread.LockType) -> None:
        try:
            self.say(line)
        except BaseException:  # nothing may stop the exit
            _stderr(line)
        finally:
            said.release()


class _Soft:
    """HookDeadline.soft's context: SIGALRM raises DeadlineExceeded while it is entered.

    A class rather than contextlib.contextmanager: contextlib (with collections and functools) is
    not imported on the thin client's path.
    """

    def __init__(self, hook: HookDeadline) -> None:
        self.hook = hook
        self.previous: Any = None

    def __enter__(self) -> None:
        import signal

        hook = self.hook

        def expire(_signum: int, _frame: object) -> None:
            # A signal already pending when settle() stopped the timer must not undo the decision.
            if not hook.settled:
                raise DeadlineExceeded(f"deadline of {hook.deadline:g}s passed")

        left = hook.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {hook.deadline:g}s passed")
        self.previous = signal.signal(signal.SIGALRM, expire)
        hook._soft = True
        if not hook.settled:
            signal.setitimer(signal.ITIMER_REAL, left)

    def __exit__(self, *exc_info: object) -> None:
        import signal

        self.hook._soft = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
