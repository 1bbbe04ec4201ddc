"""``responder deliver``, the MTA hook: message in, 0 or 75 out, whatever happens, within the deadline.

Under Postfix pipe(8) every exit status other than 0 and 75 bounces the message to its possibly
forged sender, so the hook exits 0 after every decision and 75 only for transient local faults.
responder.hook.fast settles most messages (through the service, or on the header phase); what it
leaves comes here with what it learnt (a Handoff), and the full path resumes where it stopped.
"""

from __future__ import annotations

import sys

from responder.errors import ExitCode, TransientError

# typing.TYPE_CHECKING without importing typing (which imports re): the thin client's path through
# here loads neither (responder.lmtp.client). mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import BinaryIO

    from responder.config.settings import Settings
    from responder.hook.deadline import HookDeadline
    from responder.hook.fast import Handoff


# Bytes kept of one message; the rest is read (the MTA requires it) and discarded.
MAX_MESSAGE = 64 * 1024 * 1024


def read_message(stream: BinaryIO | None) -> bytes:
    """Read standard input to the end, keeping at most MAX_MESSAGE bytes."""
    if stream is None:
        return b""
    # One sized read fills one buffer (a buffered stream reads until it is full or at EOF): chunks
    # joined at the end would hold the message twice. A stream that returns less is topped up.
    kept = stream.read(MAX_MESSAGE)
    while more := stream.read(1 << 20):
        if len(kept) < MAX_MESSAGE:
            kept += more[: MAX_MESSAGE - len(kept)]
    return kept


def guarded_deliver(argv: Sequence[str], stdin: BinaryIO | None) -> int:
    """run_deliver, with anything it did not foresee (a broken install, a signal) turned into 75."""
    try:
        return run_deliver(argv, stdin)
    except SystemExit as exc:
        if exc.code in (None, ExitCode.EX_OK):  # --help, --version
            return ExitCode.EX_OK
        last_words(f"unexpected exit {exc.code!r}; deferring")
        return ExitCode.EX_TEMPFAIL
    except BaseException as exc:  # the hook must never end with another status
        last_words(f"unexpected {exc!r}; deferring")
        return ExitCode.EX_TEMPFAIL


def last_words(text: str) -> None:
    # With descriptor 2 closed the write fails (EBADF; sys.stderr may even be None): the status matters more.
    try:  # noqa: SIM105 - contextlib is not imported on the thin client's path
        sys.stderr.write(f"responder: {text}\n")
    except (AttributeError, OSError, ValueError):
        pass


def run_deliver(argv: Sequence[str], stdin: BinaryIO | None) -> int:
    """The MTA hook. Returns 0 or 75 and nothing else, whatever happens, within deadline + margin."""
    from responder.hook.deadline import HookDeadline

    # First of all: reading the message, the configuration and the database all run under it.
    hook = HookDeadline()
    try:
        return _deliver(argv, stdin, hook)
    finally:
        hook.cancel()


def _deliver(argv: Sequence[str], stdin: BinaryIO | None, hook: HookDeadline) -> int:
    raw = b""
    try:
        raw = read_message(stdin)
    except OSError as exc:
        import logging

        from responder.logsetup import setup_logging

        setup_logging()
        logging.getLogger("responder").error("cannot read the message: %s; deferring", exc)
        return ExitCode.EX_TEMPFAIL
    outcome: str | Handoff | None
    try:
        from responder.hook.fast import deliver_fast
        from responder.outcome import DECIDED

        outcome = deliver_fast(argv, raw, hook)
    except Exception:
        # A fault there must not cost the message; the full path decides it (and meets any real bug).
        outcome = None
    if isinstance(outcome, str):
        return ExitCode.EX_OK if outcome == DECIDED else ExitCode.EX_TEMPFAIL
    return deliver_in_process(argv, raw, hook, outcome)


def _start(argv: Sequence[str], handoff: Handoff | None) -> tuple[dict[str, str], Settings]:
    """The envelope and the validated settings: from the hand-off, or from argv and the file."""
    from pathlib import Path

    from responder.config.load import load, settings_from_mapping
    from responder.hook.envelope import parse_deliver_line, resolve_envelope
    from responder.hook.fast import config_file

    if handoff is None:
        flags = parse_deliver_line(argv)
        return resolve_envelope(flags), load(Path(config_file(flags.get("config"))))
    if handoff.document is None:
        return handoff.envelope, load(Path(handoff.config))
    return handoff.envelope, settings_from_mapping(handoff.document, source=handoff.config)


def deliver_in_process(
    argv: Sequence[str], raw: bytes, hook: HookDeadline | None = None, handoff: Handoff | None = None
) -> int:
    """The full path: the validated configuration and the rule table. Returns 0 or 75.

    With ``handoff`` it goes on from what responder.hook.fast learnt: its envelope and parsed file,
    and, when the header phase ran and found nothing, its Inbound and the rules after that phase.
    Without ``hook`` (a caller in a process of its own making) only the soft deadline applies.
    """
    import logging

    from responder.config.load import ConfigError
    from responder.hook.deadline import HookDeadline
    from responder.hook.envelope import UsageError
    from responder.logsetup import setup_logging

    if hook is None:
        hook = HookDeadline(backstop=False)
    log = logging.getLogger("responder")
    try:
        fields, settings = _start(argv, handoff)
    except (UsageError, ConfigError) as exc:
        # A broken master.cf or configuration file is the admin's to fix; keep the mail meanwhile.
        setup_logging()
        log.error("%s; deferring", exc)
        return ExitCode.EX_TEMPFAIL
    hook.arm(settings.deliver.deadline)
    setup_logging(settings.log)
    hook.say = log.error
    hook.name(fields)
    from responder.decide.context import Services
    from responder.decide.engine import respond_safely
    from responder.decide.rules import AFTER_HEADERS, ALL_PHASES
    from responder.mail.message import Envelope, Inbound

    envelope = Envelope(**fields)
    inbound = handoff.inbound if handoff is not None else None
    phases = ALL_PHASES if inbound is None else AFTER_HEADERS
    services = Services(settings, on_settled=hook.settle, deadline=hook.started + settings.deliver.deadline)
    try:
        with hook.soft():
            return respond_safely(inbound or Inbound(envelope, raw), services, phases).exit_status
    except TransientError as exc:  # the soft deadline striking outside the engine's own guard
        log.error("deferring: %s", exc)
        return ExitCode.EX_TEMPFAIL
    finally:
        try:
            services.close()
        except Exception:
            log.debug("closing the services failed", exc_info=True)
