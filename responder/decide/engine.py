"""decide() runs the rule table; respond() decides, composes, sends, and records the outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from responder.decide.audit import decision_message, decision_row
from responder.decide.context import BOUNCE, Claim, Context, Services
from responder.decide.rules import ALL_PHASES, DROP, first_firing
from responder.errors import RelayRefused, RelayUnavailable, RelayUnconfirmed, TransientError
from responder.mail.message import Inbound
from responder.mail.reply import Outgoing, compose_reply
from responder.outcome import DECIDED, DEFER, INTERNAL_ERROR, Outcome

log = logging.getLogger("responder")


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str | None
    detail: str = ""
    outgoing: Outgoing | None = None
    # Of the log line: a refusal by the site's own relay is a setup fault the admin must see.
    level: int = logging.INFO


def decide(ctx: Context, phases: frozenset[str] = ALL_PHASES) -> Decision:
    """The first rule of ``phases`` that fires decides; when none does, compose the reply or the bounce.

    The pipe hook, having run the header phase itself, asks for the phases after it.
    """
    found = first_firing(ctx, phases)
    if found is not None:
        return Decision(found.rule.action, found.rule.reason, found.detail)
    from responder.decide.templates import RenderError

    try:
        if ctx.kind == BOUNCE:
            from responder.mail.dsn import build_bounce

            outgoing = build_bounce(ctx)
        else:
            outgoing = build_reply(ctx)
    except RenderError as exc:
        return Decision(DROP, "template-error", _join(str(exc), *ctx.notes))
    return Decision(ctx.kind, None, _join(*ctx.notes), outgoing)


def build_reply(ctx: Context) -> Outgoing:
    """The reply in its final bytes' form: the one place a vacation reply is composed."""
    from responder.decide.templates import html_template_for, reply_variables, template_names

    vacation = ctx.vacation
    assert vacation is not None and ctx.audience.message is not None
    settings = ctx.settings.reply
    content = ctx.content
    ctx.notes.append(content.language.note())
    language = content.language.language
    variables = reply_variables(
        vacation,
        ctx.inbound.envelope.sender,
        ctx.inbound.subject,
        ctx.interval,
        content,
        ctx.audience.message,
    )
    renderer = ctx.services.renderer
    body = renderer.render(
        template_names(vacation.template or settings.default_template, language), variables
    )
    html = None
    if variables["html_message"]:
        from responder.mail.html import sanitize

        names = template_names(html_template_for(vacation.template, settings.default_html_template), language)
        # Again at compose time: the template's own markup, and rows written by other means than `set`.
        html = sanitize(renderer.render(names, variables))
    return compose_reply(
        ctx.inbound,
        from_header=vacation.from_header or vacation.address,
        responder_address=vacation.address,
        subject=variables["reply_subject"],
        body=body,
        html=html,
        language=language,
        envelope_sender="" if settings.envelope_sender == "null" else vacation.address,
        now=ctx.now,
        hostname=ctx.settings.smtp.hostname or vacation.address.rpartition("@")[2],
    )


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _release(ctx: Context) -> None:
    for claim in reversed(ctx.claims):
        try:
            claim.release()
        except TransientError as exc:
            log.warning("could not release a claim: %s", exc)
    ctx.claims.clear()


def _confirm(ctx: Context, done: list[Claim]) -> None:
    """Keep the claims of a response that went out; those in ``done`` were marked sent already."""
    for claim in ctx.claims:
        if claim in done:
            continue
        try:
            claim.confirm()
        except TransientError as exc:
            # The response is out; the claim already blocks further replies within the interval.
            log.warning("could not confirm a claim: %s", exc)
    ctx.claims.clear()


def respond(
    inbound: Inbound, services: Services, dry_run: bool = False, phases: frozenset[str] = ALL_PHASES
) -> Decision:
    """Decide and act on one delivery; raises TransientError when the MTA should retry.

    Claims taken while deciding are kept only when the response went out, or may have (the relay
    got the final dot but its answer was lost); on every other path, a refusal by the relay
    included, they are given back so that the retry or the sender's next message can still answer.
    """
    ctx = Context(inbound, services, dry_run=dry_run)
    try:
        decision = decide(ctx, phases)
        if decision.outgoing is not None and not dry_run:
            decision = _send(ctx, decision)
        # Decided, and a response is out: what is left (claims, the audit row) can be lost, not redone.
        services.settle(decision.action, decision.reason)
    except TransientError as exc:
        _release(ctx)
        deferred = Decision(DEFER, "tempfail", str(exc))
        log_decision(inbound, deferred)
        if isinstance(exc, RelayUnavailable) and not dry_run:
            record(ctx, deferred)
        raise
    except BaseException:
        _release(ctx)
        raise
    if decision.outgoing is None or dry_run:
        _release(ctx)
    log_decision(inbound, decision)
    if not dry_run:
        record(ctx, decision)
    return decision


def _send(ctx: Context, decision: Decision) -> Decision:
    assert decision.outgoing is not None
    marked: list[Claim] = []

    def before_final_dot() -> None:
        # Marked sent before the relay can have the response: a hook killed while the relay holds
        # it leaves a sent claim, which the MTA's retry never takes over. A fault here defers.
        for claim in ctx.claims:
            claim.confirm()
            marked.append(claim)

    try:
        ctx.services.transport.send(decision.outgoing, before_final_dot)
    except RelayRefused as exc:
        # Nothing went out, so respond() gives the claims back: a refusal by the site's own relay is
        # a setup fault, and the sender's interval must not be used up by a reply never sent.
        return _refused(exc, decision)
    except RelayUnconfirmed as exc:
        # The relay may have queued it: sending again could mail the sender twice, so count it as
        # sent. The price is a rare reply lost with the relay's answer.
        _confirm(ctx, marked)
        detail = f"relay's answer to the data lost, counted as sent: {exc}"
        return Decision(
            decision.action, None, _join(detail, decision.detail), decision.outgoing, logging.WARNING
        )
    _confirm(ctx, marked)
    return decision


def _refused(exc: RelayRefused, decision: Decision) -> Decision:
    from responder.smtp.transport import refusal_advice

    setup_fault, advice = refusal_advice(exc)
    stage = f" at {exc.stage}" if exc.stage else ""
    detail = f"relay refused the {decision.action}{stage}: {exc}; nothing was sent; {advice}"
    level = logging.ERROR if setup_fault else logging.WARNING
    return Decision(DROP, "relay-refused", _join(detail, decision.detail), None, level)


def log_decision(inbound: Inbound, decision: Decision) -> None:
    # The text is shared with the pipe hook's fast path, which logs without the logging module.
    log.log(
        decision.level, "%s", decision_message(inbound, decision.action, decision.reason, decision.detail)
    )


def record(ctx: Context, decision: Decision) -> None:
    """Write the audit row; a database fault here is logged, never turned into a retry."""
    from responder.decide.records import DecisionRecord

    # The row is shared with the pipe hook's fast path, which writes it through the driver alone.
    row = decision_row(ctx, ctx.now, decision.action, decision.reason, decision.detail)
    try:
        ctx.services.store.record(DecisionRecord(**row))
    except TransientError as exc:
        log.warning("audit not written: %s", exc)


def respond_safely(inbound: Inbound, services: Services, phases: frozenset[str] = ALL_PHASES) -> Outcome:
    """respond() with every fault turned into an Outcome, logged once, audited where it can be.

    A deferral is audited by respond() when the database can take the row (a relay fault); a fault
    in the code is decided as a drop with reason ``internal-error`` and audited like any decision.
    """
    from responder.logsetup import printable

    try:
        decision = respond(inbound, services, phases=phases)
    except TransientError as exc:
        log.error("deferring: %s", printable(str(exc)))
        return Outcome(DEFER, DEFER, "tempfail", printable(" ".join(str(exc).split())))
    except Exception as exc:
        failed = Decision(DROP, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", level=logging.ERROR)
        log.exception("%s", decision_message(inbound, failed.action, failed.reason, failed.detail))
        try:
            record(Context(inbound, services), failed)
        except Exception:
            log.warning("audit not written for the internal error", exc_info=True)
        return Outcome(INTERNAL_ERROR, failed.action, failed.reason, failed.detail)
    return Outcome(DECIDED, decision.action, decision.reason, decision.detail)
