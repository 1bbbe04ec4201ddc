"""Command line: argv and stdin to the engine; the only place that maps outcomes to exit codes.

Under Postfix pipe(8) every exit status other than 0 and 75 bounces the message to its possibly
forged sender, so ``deliver`` exits 0 after every decision and 75 only for transient local faults.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress

from responder import __version__
from responder.errors import TransientError

# typing.TYPE_CHECKING without importing typing (which imports re): mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import logging
    from collections.abc import Mapping, Sequence
    from typing import BinaryIO, NoReturn

    from responder.config.settings import Settings
    from responder.config.values import SocketSpec
    from responder.hook.deadline import HookDeadline
    from responder.mail.message import Envelope

# Nothing heavy at module level: ``deliver`` runs once per message, and responder.hook.fast settles most
# messages before argparse, the configuration, SQLAlchemy or the email package would be loaded.

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_TEMPFAIL = 75

# Bytes kept of one message; the rest is read (the MTA requires it) and discarded.
MAX_MESSAGE = 64 * 1024 * 1024
HOOK_COMMANDS = frozenset({"deliver"})


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger("responder")


class UsageError(Exception):
    """Bad command line: argparse must not exit with its own status under an MTA.

    ``usage`` is what an administrator at a terminal is shown with it; the hook only logs the message.
    """

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


def _envelope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sender", help="envelope sender (default: $SENDER, as Dovecot sets it)")
    parser.add_argument("--recipient", help="envelope recipient (default: $RECIPIENT)")
    parser.add_argument("--original-recipient", help="recipient before rewriting (default: $ORIG_RECIPIENT)")
    parser.add_argument("--client-address", default="", help="SMTP client IP address, for SPF")
    parser.add_argument("--helo", default="", help="SMTP client HELO name, for SPF")
    parser.add_argument("--queue-id", default="", help="MTA queue id, for logs and the audit")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # A command without its subcommand gets the list of subcommands, as git and systemctl do.
            missing_command = message.startswith("the following arguments are required: COMMAND")
            raise UsageError(message, self.format_help() if missing_command else self.format_usage())

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
    policy = commands.add_parser(
        "policy", help="run the Postfix policy server that refuses retired recipients at RCPT"
    )
    policy.add_argument(
        "--listen", type=_listen_argument, help="unix:/path or HOST:PORT (default: policy.listen)"
    )
    commands.add_parser("serve", help="run the LMTP service on server.socket (SIGHUP reloads, SIGTERM stops)")

    from responder.cli.admin import add_admin_commands

    add_admin_commands(commands)
    return parser


def _listen_argument(text: str) -> SocketSpec:
    import argparse

    from responder.config.values import parse_socket

    try:
        return parse_socket(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    # One sized read fills one buffer (a buffered stream reads until it is full or at EOF): chunks
    # joined at the end would hold the message twice. A stream that returns less is topped up.
    kept = stream.read(MAX_MESSAGE)
    while more := stream.read(1 << 20):
        if len(kept) < MAX_MESSAGE:
            kept += more[: MAX_MESSAGE - len(kept)]
    return kept


def envelope_from(args: argparse.Namespace) -> Envelope:
    from responder.mail.message import Envelope

    return Envelope(**resolve_envelope(vars(args)))


def resolve_envelope(flags: Mapping[str, str | None]) -> dict[str, str]:
    """Flags first, then the variables Dovecot's vnd.dovecot.pipe sets; a missing one is a usage error.

    The Envelope fields as a dict: the thin client of the service needs them without loading message.
    """
    sender = flags.get("sender")
    recipient_flag = flags.get("recipient")
    if sender is None:
        sender = os.environ.get("SENDER")
    recipient = recipient_flag if recipient_flag is not None else os.environ.get("RECIPIENT")
    if sender is None and recipient_flag is None and recipient:
        # Dovecot's vnd.dovecot.pipe leaves SENDER out altogether for a null envelope sender.
        sender = ""
    if sender is None:
        raise UsageError("no envelope sender: pass --sender (Postfix: ${sender} with null_sender=)")
    if not recipient:
        raise UsageError("no envelope recipient: pass --recipient (Postfix: ${recipient})")
    original = flags.get("original_recipient")
    if original is None:
        original = os.environ.get("ORIG_RECIPIENT", "")
    return {
        "sender": sender,
        "recipient": recipient,
        "original_recipient": original,
        "client_address": flags.get("client_address") or "",
        "helo": flags.get("helo") or "",
        "queue_id": flags.get("queue_id") or "",
    }


def _settings(args: argparse.Namespace) -> Settings:
    from responder.config.load import config_path, load

    return load(config_path(args.config))


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
        from responder.logsetup import setup_logging

        setup_logging()
        _logger().error("cannot read the message: %s; deferring", exc)
        return EX_TEMPFAIL
    status = _deliver_fast(argv, raw, hook)
    if status is not None:
        return status
    return deliver_in_process(argv, raw, hook)


def _deliver_fast(argv: Sequence[str], raw: bytes, hook: HookDeadline) -> int | None:
    """The exit status when responder.hook.fast settled the message (service or header rules), else None."""
    try:
        from responder.hook.fast import DECIDED, deliver_fast

        outcome = deliver_fast(argv, raw, hook)
    except Exception:
        # A fault there must not cost the message; the full path decides it (and meets any real bug).
        return None
    if outcome is None:
        return None
    return EX_OK if outcome == DECIDED else EX_TEMPFAIL


def deliver_in_process(argv: Sequence[str], raw: bytes, hook: HookDeadline | None = None) -> int:
    """The full path: the validated configuration and the whole rule table. Returns 0 or 75.

    Without ``hook`` (a caller in a process of its own making) only the soft deadline applies.
    """
    from responder.config.load import ConfigError
    from responder.hook.deadline import HookDeadline
    from responder.logsetup import setup_logging
    from responder.mail.message import Inbound

    if hook is None:
        hook = HookDeadline(backstop=False)
    log = _logger()
    try:
        args = build_parser().parse_args(argv)
        envelope = envelope_from(args)
        settings = _settings(args)
    except (UsageError, ConfigError) as exc:
        # A broken master.cf or configuration file is the admin's to fix; keep the mail meanwhile.
        setup_logging()
        log.error("%s; deferring", exc)
        return EX_TEMPFAIL
    hook.arm(settings.deliver.deadline)
    setup_logging(settings.log)
    hook.say = log.error
    hook.name(envelope._asdict())
    from responder.decide.context import Services
    from responder.decide.engine import respond

    services = Services(settings, on_settled=hook.settle, deadline=hook.started + settings.deliver.deadline)
    try:
        with hook.soft():
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
    import logging

    from responder.decide.context import Services
    from responder.decide.engine import respond
    from responder.logsetup import setup_logging
    from responder.mail.message import Inbound

    if stdin is not None and stdin.isatty():
        print("responder: reading the message from standard input; end it with Ctrl-D", file=sys.stderr)
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


def run_serve(args: argparse.Namespace) -> int:
    """The LMTP service: 0 after a stop by signal, 1 when it cannot start."""
    from responder.config.load import config_path
    from responder.daemons.lmtp_service import ServeError, serve

    path = config_path(args.config)
    try:
        serve(path, _settings(args))
    except ServeError as exc:
        _logger().error("%s", exc)
        return EX_FAILURE
    return EX_OK


def _guarded_deliver(argv: Sequence[str], stdin: BinaryIO | None) -> int:
    """run_deliver, with anything it did not foresee (a broken install, a signal) turned into 75."""
    try:
        return run_deliver(argv, stdin)
    except SystemExit as exc:
        if exc.code in (None, EX_OK):  # --help, --version
            return EX_OK
        _last_words(f"unexpected exit {exc.code!r}; deferring")
        return EX_TEMPFAIL
    except BaseException as exc:  # the hook must never end with another status
        _last_words(f"unexpected {exc!r}; deferring")
        return EX_TEMPFAIL


def _last_words(text: str) -> None:
    # With descriptor 2 closed the write fails (EBADF; sys.stderr may even be None): the status matters more.
    with suppress(AttributeError, OSError, ValueError):
        sys.stderr.write(f"responder: {text}\n")


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    if _command_word(argv) in HOOK_COMMANDS:
        return _guarded_deliver(argv, stdin)
    from responder.config.load import ConfigError

    try:
        args = build_parser().parse_args(argv)
        if args.command == "explain":
            return run_explain(args, stdin)
        if args.command == "policy":
            from responder.daemons.policy_service import run_policy

            return run_policy(args, _settings(args))
        if args.command == "serve":
            return run_serve(args)
        from responder.cli.admin import run_admin

        return run_admin(args, _settings(args))
    except UsageError as exc:
        print(f"{exc.usage}responder: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except (ConfigError, TransientError) as exc:
        print(f"responder: error: {exc}", file=sys.stderr)
        return EX_FAILURE
