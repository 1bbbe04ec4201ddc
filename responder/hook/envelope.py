"""The hook's command line and envelope, shared by the CLI parser and the pipe hook's fast path."""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing (which imports re): the thin client's path through
# here loads neither (responder.lmtp.client). mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

ENVELOPE_FLAGS = {
    "--sender": "sender",
    "--recipient": "recipient",
    "--original-recipient": "original_recipient",
    "--client-address": "client_address",
    "--helo": "helo",
    "--queue-id": "queue_id",
}
# Options of the hook itself that the quick reader takes too.
HOOK_FLAGS = {**ENVELOPE_FLAGS, "--service": "service"}


class UsageError(Exception):
    """Bad command line: argparse must not exit with its own status under an MTA.

    ``usage`` is what an administrator at a terminal is shown with it; the hook only logs the message.
    """

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


def add_envelope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sender", help="envelope sender (default: $SENDER, as Dovecot sets it)")
    parser.add_argument("--recipient", help="envelope recipient (default: $RECIPIENT)")
    parser.add_argument("--original-recipient", help="recipient before rewriting (default: $ORIG_RECIPIENT)")
    parser.add_argument("--client-address", default="", help="SMTP client IP address, for SPF")
    parser.add_argument("--helo", default="", help="SMTP client HELO name, for SPF")
    parser.add_argument("--queue-id", default="", help="MTA queue id, for logs and the audit")


def hook_arguments(argv: Sequence[str]) -> dict[str, str] | None:
    """``[--config X] deliver [--flag value | --flag=value]...``; None for anything else (argparse's)."""
    found: dict[str, str] = {}
    command = False
    position = 0
    while position < len(argv):
        arg = argv[position]
        position += 1
        if not command and arg == "deliver":
            command = True
            continue
        name, equals, value = arg.partition("=")
        key = HOOK_FLAGS.get(name) if command else ("config" if name == "--config" else None)
        if key is None:
            return None
        if not equals:
            # argparse would read a following "-x" as an option; leave such lines to it.
            if position >= len(argv) or argv[position].startswith("-"):
                return None
            value = argv[position]
            position += 1
        found[key] = value
    return found if command else None


def command_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """``responder [--config X] [--version] COMMAND``, with the ``deliver`` command; the rest is the CLI's."""
    import argparse

    from responder import __version__

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # A command without its subcommand gets the list of subcommands, as git and systemctl do.
            missing_command = message.startswith("the following arguments are required: COMMAND")
            raise UsageError(message, self.format_help() if missing_command else self.format_usage())

    parser: argparse.ArgumentParser = _Parser(
        prog="responder", description="RFC 3834 autoresponder for verified senders."
    )
    parser.add_argument(
        "--config", help="configuration file (default: $RESPONDER_CONFIG or /etc/responder/responder.toml)"
    )
    parser.add_argument("--version", action="version", version=f"responder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deliver = commands.add_parser("deliver", help="decide and act on one message on stdin (the MTA hook)")
    add_envelope_arguments(deliver)
    deliver.add_argument(
        "--service",
        help="the LMTP service's socket (unix:/path): hand the message there, then read the configuration",
    )
    return parser, commands


def parse_deliver_line(argv: Sequence[str]) -> dict[str, str | None]:
    """The ``deliver`` line as argparse reads it (the forms hook_arguments leaves), options by name.

    UsageError for a line argparse refuses; ``--help`` and ``--version`` exit as argparse does.
    """
    parser, _commands = command_parser()
    return vars(parser.parse_args(argv))


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
