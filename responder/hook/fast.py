"""The pipe hook's first steps, before anything heavy is imported: hand over to the service, or decide.

``responder deliver`` runs once per message. When ``[server] socket`` is set and the service answers,
the message goes there (responder.lmtp.client). Otherwise, with a SQLite database, the HEADERS phase of
the rule table runs here on a HeaderFacts (rules.first_firing); a message one of its rules suppresses
is logged and audited through ``sqlite3`` alone (responder.store.direct). Everything
else returns None and the caller takes the full path: the validated configuration, SQLAlchemy,
templates, DNS and SMTP. All of it runs under the hook's deadline (responder.hook.deadline), armed
here once ``deliver.deadline`` is read.

The thin client's three keys are read without tomllib (responder.config.early); every other key
is read from the file parsed by ``tomllib``, with the same rules as responder.config.settings; a
value it cannot take as the full loader would sends the message down the full path, which reports
it. The rest of the file is validated when a message needs the rest. What it learnt (envelope, the
parsed file, the Inbound after the header phase) goes on in a Handoff, so that the full path resumes
where it stopped (responder.hook.deliver).
"""

from __future__ import annotations

from responder.config.early import DEFAULTS, Invalid, LogOptions, Options, thin_client_keys
from responder.hook.envelope import UsageError, hook_arguments, resolve_envelope
from responder.outcome import DECIDED, DEFER

# typing.TYPE_CHECKING without importing typing (which imports re): the thin client's path through
# here loads neither (responder.lmtp.client). mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from responder.hook.deadline import HookDeadline
    from responder.mail.message import Inbound


DEFAULT_CONFIG = "/etc/responder/responder.toml"
CONFIG_VARIABLE = "RESPONDER_CONFIG"
# The service answers 451 at its deliver.deadline; the client waits for that answer until this long
# before the backstop ends the process, so that it logs the deferral itself.
LAST_WORD = 0.5


class Handoff:
    """What this path learnt of a message it leaves to the full path, so that nothing is done twice.

    ``document`` is the parsed configuration file (None when it could not be read or parsed: the full
    loader says why); ``inbound`` is set once the header phase ran, and found nothing, on it.
    """

    def __init__(
        self,
        envelope: dict[str, str],
        config: str,
        document: dict[str, Any] | None,
        inbound: Inbound | None = None,
    ) -> None:
        self.envelope = envelope
        self.config = config
        self.document = document
        self.inbound = inbound


def config_file(explicit: str | None) -> str:
    """The configuration file named by --config, else $RESPONDER_CONFIG, else the default."""
    import os

    return explicit or os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG


def read_document(path: str) -> dict[str, Any] | None:
    """The parsed file, or None when it cannot be read or is not valid TOML (the full loader says why)."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None


def deliver_fast(argv: Sequence[str], raw: bytes, hook: HookDeadline | None = None) -> str | Handoff | None:
    """DECIDED or DEFER when settled here; else what the full path goes on from (None: from scratch).

    ``hook`` is the process's deadline; without one (an in-process caller) nothing is armed.
    """
    args = hook_arguments(argv)
    if args is None:
        return None
    try:
        envelope = resolve_envelope(args)
    except UsageError:
        return None
    given = args.pop("service", "")
    if given:
        # Named on the command line: the message goes there before the configuration is even read.
        if hook is not None:
            hook.name(envelope)
        outcome = _through_service(given, DEFAULTS["server"]["connect_timeout"], envelope, raw, hook)
        if outcome is not None:
            return outcome
    config = config_file(args.get("config"))
    if hook is not None:
        hook.name(envelope)
    armed = False
    early = None if given else thin_client_keys(config)
    if early is not None and early["socket"]:
        # The thin client's keys read without tomllib, whose import costs more than the rest of its path.
        assert isinstance(early["deadline"], float) and isinstance(early["connect_timeout"], float)
        assert isinstance(early["socket"], str)
        if hook is not None:
            hook.arm(early["deadline"])
        armed = True
        outcome = _through_service(early["socket"], early["connect_timeout"], envelope, raw, hook)
        if outcome is not None:
            return outcome
    document = read_document(config)
    handoff = Handoff(envelope, config, document)
    if document is None:
        return handoff
    try:
        if hook is not None and not armed:
            hook.arm(Options(document, "deliver").duration("deadline"))
        server = Options(document, "server")
        socket = server.text("socket")
        if socket and not given and early is None:
            outcome = _through_service(socket, server.duration("connect_timeout"), envelope, raw, hook)
            if outcome is not None:
                return outcome
        return _decide_on_headers(handoff, raw, hook)
    except Invalid:
        return handoff


def _through_service(
    socket: str, connect_timeout: float, envelope: dict[str, str], raw: bytes, hook: HookDeadline | None
) -> str | None:
    from responder.hook.deadline import DEFAULT_DEADLINE, MARGIN
    from responder.lmtp import client as lmtpclient

    left = DEFAULT_DEADLINE + MARGIN if hook is None else hook.until_end()
    timeout = max(left - LAST_WORD, LAST_WORD)
    outcome, problem = lmtpclient.deliver(
        socket,
        raw=raw,
        connect_timeout=min(connect_timeout, timeout),
        timeout=timeout,
        **envelope,
    )
    if outcome == lmtpclient.DECIDED:
        return DECIDED
    if outcome == lmtpclient.DEFER:
        _stderr(f"ERROR deferring: {problem}")
        return DEFER
    # Nobody listening: decide here, as without a service (the service's absence is worth a line).
    _stderr(f"WARNING {problem}; deciding in-process")
    return None


def _stderr(line: str) -> None:
    # The logging module is not loaded on the client path; this is logsetup's format.
    import os
    import sys

    try:
        sys.stderr.write(f"responder[{os.getpid()}]: {line}\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # descriptor 2 closed, or sys.stderr None
        pass  # a lost line must not turn into deciding the message a second time


def _decide_on_headers(handoff: Handoff, raw: bytes, hook: HookDeadline | None) -> str | Handoff:
    from responder.store.direct import direct_supported

    assert handoff.document is not None
    database = Options(handoff.document, "database")
    url = database.text("url")
    busy_timeout = database.duration("busy_timeout")
    if not direct_supported(url):
        return handoff
    max_received = Options(handoff.document, "deliver").integer("max_received")
    log_options = LogOptions(handoff.document)

    from responder.decide.context import HeaderFacts, NeedsFullPath, utcnow
    from responder.decide.rules import HEADER_PHASE, first_firing
    from responder.mail.message import Envelope, Inbound

    ctx = HeaderFacts(Inbound(Envelope(**handoff.envelope), raw), max_received)
    try:
        found = first_firing(ctx, HEADER_PHASE)
    except NeedsFullPath:
        return handoff
    except Exception:  # a fault in a rule: the full path meets it again and logs it
        return handoff
    if found is None:
        # The header phase is done: the full path resumes after it, on the same Inbound.
        handoff.inbound = ctx.inbound
        return handoff
    action, reason, detail = found.rule.action, found.rule.reason, found.detail

    import logging

    from responder.decide.audit import decision_message, decision_row
    from responder.logsetup import setup_logging
    from responder.store.direct import record_direct

    setup_logging(log_options)
    log = logging.getLogger("responder")
    if hook is not None:
        # Nothing is owed past this point: a backstop from here on loses the audit row, not the decision.
        hook.settle(action, reason)
        hook.say = log.error
    log.info("%s", decision_message(ctx.inbound, action, reason, detail))
    problem = record_direct(url, busy_timeout, decision_row(ctx, utcnow(), action, reason, detail))
    if problem is not None:
        log.warning("%s", problem)
    return DECIDED
