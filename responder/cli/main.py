"""Command line: argv to the subcommands; ``deliver``, the MTA hook, is responder.hook.deliver's."""

from __future__ import annotations

import sys

from responder.errors import ExitCode, TransientError
from responder.hook.envelope import UsageError, add_envelope_arguments, command_parser

# typing.TYPE_CHECKING without importing typing (which imports re): the thin client's path through
# here loads neither (responder.lmtp.client). mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import logging
    from collections.abc import Sequence
    from typing import BinaryIO

    from responder.config.settings import Settings
    from responder.config.values import SocketSpec
    from responder.mail.message import Envelope

# Nothing heavy at module level: ``deliver`` runs once per message, and responder.hook.fast settles most
# messages before argparse, the configuration, SQLAlchemy or the email package would be loaded.


HOOK_COMMANDS = frozenset({"deliver"})


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger("responder")


def build_parser() -> argparse.ArgumentParser:
    parser, commands = command_parser()
    explain = commands.add_parser(
        "explain", help="print the decision for a message on stdin; no side effects"
    )
    add_envelope_arguments(explain)
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    policy = commands.add_parser(
        "policy", help="run the Postfix policy server that refuses retired recipients at RCPT"
    )
    policy.add_argument(
        "--listen", type=_listen_argument, help="unix:/path or HOST:PORT (default: policy.listen)"
    )
    commands.add_parser("serve", help="run the LMTP service on server.socket (SIGHUP reloads, SIGTERM stops)")
    commands.add_parser("web", help="run the web service (pages, JMAP, API) on web.listen")

    from responder.cli.admin import bounces, db, dkim, limits, log, outbox, tokens, vacations

    for admin in (db, vacations, bounces, log, limits, outbox, dkim, tokens):
        admin.register(commands)
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


def envelope_from(args: argparse.Namespace) -> Envelope:
    from responder.hook.envelope import resolve_envelope
    from responder.mail.message import Envelope

    return Envelope(**resolve_envelope(vars(args)))


def _settings(args: argparse.Namespace) -> Settings:
    from responder.config.load import config_path, load

    return load(config_path(args.config))


def run_explain(args: argparse.Namespace, stdin: BinaryIO | None) -> int:
    import json
    import logging

    from responder.decide.context import Services
    from responder.decide.engine import respond
    from responder.logsetup import setup_logging
    from responder.mail.message import Inbound

    if stdin is not None and stdin.isatty():
        print("responder: reading the message from standard input; end it with Ctrl-D", file=sys.stderr)
    from responder.hook.deliver import read_message

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
        return ExitCode.EX_OK
    print(f"action: {decision.action}")
    print(f"reason: {decision.reason or '-'}")
    if decision.detail:
        print(f"detail: {decision.detail}")
    if decision.outgoing is not None and message is not None:
        print(f"envelope: MAIL FROM:<{decision.outgoing.mail_from}> RCPT TO:<{decision.outgoing.rcpt_to}>")
        print()
        print(message.replace("\r\n", "\n"), end="")
    return ExitCode.EX_OK


def run_serve(args: argparse.Namespace) -> int:
    """The LMTP service: 0 after a stop by signal, 1 when it cannot start."""
    from responder.config.load import config_path
    from responder.daemons.lmtp_service import ServeError
    from responder.daemons.serve import serve

    path = config_path(args.config)
    try:
        serve(path, _settings(args))
    except ServeError as exc:
        _logger().error("%s", exc)
        return ExitCode.EX_FAILURE
    return ExitCode.EX_OK


def run_web(args: argparse.Namespace) -> int:
    """The web service: 0 after a stop by signal, 1 when it cannot start."""
    from responder.logsetup import setup_logging
    from responder.web.server import run_web as serve_web

    settings = _settings(args)
    setup_logging(settings.log)
    return serve_web(settings)


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    if _command_word(argv) in HOOK_COMMANDS:
        try:
            from responder.hook.deliver import guarded_deliver
        except BaseException as exc:  # a broken install: as entry.py, the message is kept, not bounced
            # Not contextlib.suppress: this module is on the thin client's path, which imports
            # nothing it can do without (contextlib brings collections and functools, 3 ms).
            try:  # noqa: SIM105 - see above
                sys.stderr.write(f"responder: cannot load the hook ({exc!r}); deferring\n")
            except (AttributeError, OSError, ValueError):
                pass
            return ExitCode.EX_TEMPFAIL
        return guarded_deliver(argv, stdin)
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
        if args.command == "dkim":
            from responder.cli.admin.dkim import run_dkim

            return run_dkim(args, _settings(args))
        if args.command == "web":
            return run_web(args)
        from responder.cli.admin.common import run_admin

        return run_admin(args, _settings(args))
    except UsageError as exc:
        print(f"{exc.usage}responder: error: {exc}", file=sys.stderr)
        return ExitCode.EX_USAGE
    except (ConfigError, TransientError) as exc:
        print(f"responder: error: {exc}", file=sys.stderr)
        return ExitCode.EX_FAILURE
