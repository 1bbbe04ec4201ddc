"""decide() runs the rule table; respond() decides, composes, sends, and records the outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from responder.decide.audit import decision_message, decision_row
from responder.decide.context import BOUNCE, Claim, CommitClaim, Context, IntervalClaim, Services
from responder.decide.rules import ALL_PHASES, DROP, first_firing
from responder.errors import RelayRefused, RelayUnavailable, RelayUnconfirmed, TransientError
from responder.mail.message import Inbound
from responder.mail.reply import Outgoing, compose_reply
from responder.observe import events
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

    The composed response is signed last, in this one place, whatever its parts are: a signature
    covers the final bytes.

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
    if ctx.settings.dkim.keys_dir:
        signed = ctx.services.signer.sign(outgoing)
        if signed.note:
            ctx.notes.append(signed.note)
        if not signed.signed and ctx.settings.dkim.require:
            # Nothing goes out, so respond() gives the claims back, as for any drop after deciding.
            return Decision(DROP, "unsigned", _join(*ctx.notes), level=logging.WARNING)
        outgoing = signed.outgoing
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
        if decision.outgoing is not None and not dry_run and services.queues_responses:
            # The decision, its claims, the response and its audit row in one commit: owed from now.
            suppressed = _queue(ctx, decision)
            if suppressed is None:
                services.settle(decision.action, decision.reason)
                log_decision(inbound, decision)
                return decision
            # Another delivery's response took the interval first: decided like any suppression.
            decision = suppressed
        elif decision.outgoing is not None and not dry_run:
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
        _relay_fault(exc, usable=True)
        return _refused(exc, decision)
    except RelayUnconfirmed as exc:
        # The relay may have queued it: sending again could mail the sender twice, so count it as
        # sent. The price is a rare reply lost with the relay's answer.
        _relay_fault(exc, usable=False)
        events.observer.response_sent(decision.action)
        _confirm(ctx, marked)
        detail = f"relay's answer to the data lost, counted as sent: {exc}"
        return Decision(
            decision.action, None, _join(detail, decision.detail), decision.outgoing, logging.WARNING
        )
    except RelayUnavailable as exc:
        _relay_fault(exc, usable=False)
        raise
    events.observer.response_sent(decision.action)
    events.observer.dependency_ok(events.RELAY)
    _confirm(ctx, marked)
    return decision


def _relay_fault(exc: BaseException, usable: bool) -> None:
    """Count a response the relay did not take; a refusal is an answer, so the relay still works."""
    from responder.smtp.faults import relay_fault_kind

    events.observer.relay_failed(relay_fault_kind(exc))
    if usable:
        events.observer.dependency_ok(events.RELAY)
    else:
        events.observer.dependency_failed(events.RELAY)


def _queue(ctx: Context, decision: Decision) -> Decision | None:
    """Commit the response to the outbox with the claims it holds and its audit row; TransientError
    (nothing promised, the claims given back by respond) when the database cannot take it.

    The suppression to decide instead (nothing written) when an interval claim the commit takes is
    held by a response another delivery committed first.
    """
    import datetime as dt
    from dataclasses import replace

    from responder.decide.records import DecisionRecord
    from responder.decide.rules import INTERVAL
    from responder.store.outbox import ClaimTaken, HeldClaim, Owed

    outgoing = decision.outgoing
    assert outgoing is not None
    held: list[HeldClaim] = []
    at_commit: list[CommitClaim] = []
    counters: list[Any] = []
    for claim in ctx.claims:
        if isinstance(claim, IntervalClaim):
            held.append(HeldClaim(claim.kind, claim.owner_id, claim.sender_key, claim.token))
        elif isinstance(claim, CommitClaim):
            at_commit.append(claim)
        counters.extend(getattr(claim, "counters", ()))
    row = decision_row(ctx, ctx.now, decision.action, decision.reason, decision.detail)
    max_age = dt.timedelta(seconds=ctx.settings.outbox.max_age)
    owed = Owed(outgoing.mail_from, outgoing.rcpt_to, outgoing.as_bytes(), decision.action, ctx.now + max_age)
    ctx.services.before_queue()
    store = ctx.services.store
    # The interval is judged at the moment of the commit, as a claim written earlier is when taken.
    now = ctx.services.clock()
    taking = [replace(claim.request, now=now) for claim in at_commit]
    try:
        queued = store.queue_response(
            owed, held, counters, DecisionRecord(**row), ctx.services.outbox_lease(ctx.now), taking
        )
    except ClaimTaken as taken:
        detail = _join(at_commit[taken.index].detail, *ctx.notes)
        return Decision(INTERVAL.action, INTERVAL.reason, detail)
    except TransientError:
        # The commit may have happened with only its answer lost: a confirmed claim then stands for
        # the response the outbox owes, and must not be given back (the retry would answer again).
        for kept in held:
            try:
                store.release_claim(kept.kind, kept.owner_id, kept.sender_key, kept.token, only_pending=True)
            except TransientError as exc:
                log.warning("could not release a claim: %s", exc)
        ctx.claims[:] = [c for c in ctx.claims if not isinstance(c, IntervalClaim)]
        raise
    ctx.claims.clear()
    ctx.services.queued(queued)
    return None


def refused_detail(exc: RelayRefused, action: str) -> tuple[str, int]:
    """The audit detail and log level of a refusal by the relay (5xx): nothing was sent."""
    from responder.smtp.transport import refusal_advice

    setup_fault, advice = refusal_advice(exc)
    stage = f" at {exc.stage}" if exc.stage else ""
    detail = f"relay refused the {action}{stage}: {exc}; nothing was sent; {advice}"
    return detail, logging.ERROR if setup_fault else logging.WARNING


def _refused(exc: RelayRefused, decision: Decision) -> Decision:
    detail, level = refused_detail(exc, decision.action)
    return Decision(DROP, "relay-refused", _join(detail, decision.detail), None, level)


def log_decision(inbound: Inbound, decision: Decision) -> None:
    # The one place a decision is logged, so the metrics count what the log and the audit show.
    events.observer.decision(decision.action, decision.reason)
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
        ctx.services.record(DecisionRecord(**row))
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
        events.observer.decision(failed.action, failed.reason)
        log.exception("%s", decision_message(inbound, failed.action, failed.reason, failed.detail))
        try:
            record(Context(inbound, services), failed)
        except Exception:
            log.warning("audit not written for the internal error", exc_info=True)
        return Outcome(INTERNAL_ERROR, failed.action, failed.reason, failed.detail)
    return Outcome(DECIDED, decision.action, decision.reason, decision.detail)
