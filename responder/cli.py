"""Command line: argv and stdin to the engine; the only place that maps outcomes to exit codes.

Under Postfix pipe(8) every exit status other than 0 and 75 bounces the message to its possibly
forged sender, so ``deliver`` exits 0 after every decision and 75 only for transient local faults.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO, NoReturn

from responder import __version__
from responder.config import ConfigError, Settings, config_path, load
from responder.errors import DeadlineExceeded, TransientError
from responder.logsetup import setup_logging
from responder.message import Envelope, Inbound

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_TEMPFAIL = 75

# Bytes kept of one message; the rest is read (the MTA requires it) and discarded.
MAX_MESSAGE = 64 * 1024 * 1024
HOOK_COMMANDS = frozenset({"deliver"})

log = logging.getLogger("responder")


class UsageError(Exception):
    """Bad command line: argparse must not exit with its own status under an MTA."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _envelope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sender", help="envelope sender (default: $SENDER, as Dovecot sets it)")
    parser.add_argument("--recipient", help="envelope recipient (default: $RECIPIENT)")
    parser.add_argument("--original-recipient", help="recipient before rewriting (default: $ORIG_RECIPIENT)")
    parser.add_argument("--client-address", default="", help="SMTP client IP address, for SPF")
    parser.add_argument("--helo", default="", help="SMTP client HELO name, for SPF")
    parser.add_argument("--queue-id", default="", help="MTA queue id, for logs and the audit")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="responder", description="RFC 3834 autoresponder for verified senders.")
    parser.add_argument(
        "--config", help="configuration file (default: $RESPONDER_CONFIG or /etc/responder/responder.toml)"
    )
    parser.add_argument("--version", action="version", version=f"responder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deliver = commands.add_parser("deliver", help="decide and act on one message on stdin (the MTA hook)")
    _envelope_arguments(deliver)
    explain = commands.add_parser(
        "explain", help="print the decision for a message on stdin; no side effects"
    )
    _envelope_arguments(explain)
    explain.add_argument("--json", action="store_true", help="print one JSON object")

    from responder.admin import add_admin_commands

    add_admin_commands(commands)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv, found without parsing (parsing may fail)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def read_message(stream: BinaryIO | None) -> bytes:
    """Read standard input to the end, keeping at most MAX_MESSAGE bytes."""
    if stream is None:
        return b""
    chunks: list[bytes] = []
    kept = 0
    while chunk := stream.read(1 << 20):
        if kept < MAX_MESSAGE:
            chunks.append(chunk[: MAX_MESSAGE - kept])
            kept += len(chunks[-1])
    return b"".join(chunks)


def envelope_from(args: argparse.Namespace) -> Envelope:
    """Flags first, then the variables Dovecot's vnd.dovecot.pipe sets; a missing one is a usage error."""
    sender = args.sender if args.sender is not None else os.environ.get("SENDER")
    recipient = args.recipient if args.recipient is not None else os.environ.get("RECIPIENT")
    if sender is None and args.recipient is None and recipient:
        # Dovecot's vnd.dovecot.pipe leaves SENDER out altogether for a null envelope sender.
        sender = ""
    if sender is None:
        raise UsageError("no envelope sender: pass --sender (Postfix: ${sender} with null_sender=)")
    if not recipient:
        raise UsageError("no envelope recipient: pass --recipient (Postfix: ${recipient})")
    original = args.original_recipient
    if original is None:
        original = os.environ.get("ORIG_RECIPIENT", "")
    return Envelope(
        sender=sender,
        recipient=recipient,
        original_recipient=original,
        client_address=args.client_address,
        helo=args.helo,
        queue_id=args.queue_id,
    )


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise DeadlineExceeded in the main thread when ``seconds`` pass."""

    def expire(_signum: int, _frame: object) -> None:
        raise DeadlineExceeded(f"deadline of {seconds:g}s passed")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _settings(args: argparse.Namespace) -> Settings:
    return load(config_path(args.config))


def run_deliver(argv: Sequence[str], stdin: BinaryIO | None) -> int:
    """The MTA hook. Returns 0 or 75 and nothing else, whatever happens."""
    raw = b""
    try:
        raw = read_message(stdin)
    except OSError as exc:
        setup_logging()
        log.error("cannot read the message: %s; deferring", exc)
        return EX_TEMPFAIL
    try:
        args = build_parser().parse_args(argv)
        envelope = envelope_from(args)
        settings = _settings(args)
    except (UsageError, ConfigError) as exc:
        # A broken master.cf or configuration file is the admin's to fix; keep the mail meanwhile.
        setup_logging()
        log.error("%s; deferring", exc)
        return EX_TEMPFAIL
    setup_logging(settings.log)
    from responder.context import Services
    from responder.engine import respond

    services = Services(settings)
    try:
        with deadline(settings.deliver.deadline):
            respond(Inbound(envelope, raw), services)
    except TransientError as exc:
        log.error("deferring: %s", exc)
        return EX_TEMPFAIL
    except Exception:
        log.exception(
            "queue_id=%s sender=<%s> recipient=<%s> action=drop reason=internal-error",
            envelope.queue_id or "-",
            envelope.sender,
            envelope.recipient,
        )
        return EX_OK
    finally:
        try:
            services.close()
        except Exception:
            log.debug("closing the services failed", exc_info=True)
    return EX_OK


def run_explain(args: argparse.Namespace, stdin: BinaryIO | None) -> int:
    import json

    from responder.context import Services
    from responder.engine import respond

    raw = read_message(stdin)
    settings = _settings(args)
    setup_logging(settings.log)
    logging.getLogger("responder").setLevel(logging.WARNING)
    services = Services(settings)
    try:
        decision = respond(Inbound(envelope_from(args), raw), services, dry_run=True)
    finally:
        services.close()
    message = decision.outgoing.as_bytes().decode("utf-8", "replace") if decision.outgoing else None
    if args.json:
        out = {
            "action": decision.action,
            "reason": decision.reason,
            "detail": decision.detail,
            "mail_from": decision.outgoing.mail_from if decision.outgoing else None,
            "rcpt_to": decision.outgoing.rcpt_to if decision.outgoing else None,
            "message": message,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return EX_OK
    print(f"action: {decision.action}")
    print(f"reason: {decision.reason or '-'}")
    if decision.detail:
        print(f"detail: {decision.detail}")
    if decision.outgoing is not None and message is not None:
        print(f"envelope: MAIL FROM:<{decision.outgoing.mail_from}> RCPT TO:<{decision.outgoing.rcpt_to}>")
        print()
        print(message.replace("\r\n", "\n"), end="")
    return EX_OK


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    if _command_word(argv) in HOOK_COMMANDS:
        return run_deliver(argv, stdin)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "explain":
            return run_explain(args, stdin)
        from responder.admin import run_admin

        return run_admin(args, _settings(args))
    except UsageError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return EX_USAGE
    except (ConfigError, TransientError) as exc:
        print(f"responder: error: {exc}", file=sys.stderr)
        return EX_FAILURE
