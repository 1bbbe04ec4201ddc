"""``vacation set``'s content options: HTML, the external message and audience, languages, checked."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from responder.cli.admin.common import AdminError
from responder.decide.records import (
    EXTERNAL,
    EXTERNAL_AUDIENCES,
    INTERNAL,
    Translation,
    Vacation,
    VacationChanges,
)


def register_content(put: argparse.ArgumentParser) -> None:
    """The options after --message/--message-file/--subject that say what the reply holds."""
    html = put.add_mutually_exclusive_group()
    html.add_argument("--html", help="HTML message, next to or instead of the text; '' clears")
    html.add_argument("--html-file", help="file holding the HTML message (UTF-8)")
    external = put.add_mutually_exclusive_group()
    external.add_argument(
        "--external-message", help="text for senders outside reply.internal_domains; '' clears"
    )
    external.add_argument("--external-message-file", help="file holding the external text (UTF-8)")
    put.add_argument("--external-subject", help="subject of the external reply; '' clears")
    external_html = put.add_mutually_exclusive_group()
    external_html.add_argument("--external-html", help="HTML of the external reply; '' clears")
    external_html.add_argument("--external-html-file", help="file holding the external HTML (UTF-8)")
    put.add_argument(
        "--external-audience",
        choices=EXTERNAL_AUDIENCES,
        help="who outside the internal domains gets a reply: all (default) or none",
    )
    put.add_argument(
        "--language",
        help="BCP 47 tag (de, pt-BR): the message, subject and HTML options given are that language's",
    )
    put.add_argument("--default-language", help="BCP 47 tag of the vacation's own messages; '' clears")
    put.add_argument(
        "--remove-language", action="append", default=[], help="delete the messages in this language"
    )


def _read(text: str | None, path: str | None) -> str | None:
    if text is not None:
        return text
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}") from None


def _tag(text: str, option: str) -> str:
    from responder.mail.languages import language_tag

    try:
        return language_tag(text)
    except ValueError as exc:
        raise AdminError(f"{option}: {exc}") from None


def _text(value: str | None, option: str) -> str | None:
    """A text message or subject as given, refused when too long or naming an unknown placeholder."""
    from responder.decide.content import MAX_MESSAGE, MAX_SUBJECT, PLACEHOLDERS, unknown_placeholders

    if value is None:
        return None
    limit = MAX_SUBJECT if "subject" in option else MAX_MESSAGE
    if len(value) > limit:
        raise AdminError(f"{option}: {len(value)} characters; at most {limit}")
    unknown = unknown_placeholders(value)
    if unknown:
        known = ", ".join(PLACEHOLDERS)
        raise AdminError(f"{option}: unknown placeholder {{{{ {unknown[0]} }}}} (known: {known})")
    return value


def _html(value: str | None, option: str) -> str | None:
    """The sanitised HTML to store; what the sanitiser removed is said on stderr."""
    from responder.decide.content import PLACEHOLDERS, unknown_placeholders
    from responder.mail.html import HtmlError, checked_html

    if not value:
        return value
    unknown = unknown_placeholders(value)
    if unknown:
        known = ", ".join(PLACEHOLDERS)
        raise AdminError(f"{option}: unknown placeholder {{{{ {unknown[0]} }}}} (known: {known})")
    try:
        clean, removed = checked_html(value)
    except HtmlError as exc:
        raise AdminError(f"{option}: {exc}") from None
    if removed:
        print(f"responder: note: {option}: removed {', '.join(removed)}", file=sys.stderr)
    if not clean.strip():
        raise AdminError(f"{option}: nothing is left once sanitised")
    return clean


def _given(args: argparse.Namespace, message: str | None) -> dict[tuple[str, str], str | None]:
    """Each content option given, by (audience, field), each checked."""
    values: dict[tuple[str, str], str | None] = {
        (INTERNAL, "message"): _text(message, "--message"),
        (INTERNAL, "subject"): _text(args.subject, "--subject"),
        (INTERNAL, "html_message"): _html(_read(args.html, args.html_file), "--html"),
        (EXTERNAL, "message"): _text(
            _read(args.external_message, args.external_message_file), "--external-message"
        ),
        (EXTERNAL, "subject"): _text(args.external_subject, "--external-subject"),
        (EXTERNAL, "html_message"): _html(
            _read(args.external_html, args.external_html_file), "--external-html"
        ),
    }
    return {key: value for key, value in values.items() if value is not None}


_DEFAULT_FIELDS = {
    (INTERNAL, "message"): "message",
    (INTERNAL, "subject"): "subject",
    (INTERNAL, "html_message"): "html_message",
    (EXTERNAL, "message"): "external_message",
    (EXTERNAL, "subject"): "external_subject",
    (EXTERNAL, "html_message"): "external_html_message",
}


class ContentChanges:
    """What ``vacation set`` changes in the vacation's content: columns, translations, languages dropped."""

    def __init__(self) -> None:
        self.translations: list[Translation] = []
        self.drop_languages: list[str] = []

    def apply(self, prospective: Vacation) -> Vacation:
        """``prospective`` with the translation changes, to check it before saving."""
        kept = [
            t
            for t in prospective.translations
            if t.language not in self.drop_languages
            and all((t.audience, t.language) != (n.audience, n.language) for n in self.translations)
        ]
        new = [t for t in self.translations if t.subject or t.message or t.html_message]
        return dataclasses.replace(prospective, translations=(*kept, *new))


def content_options(
    args: argparse.Namespace, existing: Vacation | None, message: str | None, fields: VacationChanges
) -> ContentChanges:
    """Read the content options into ``fields`` (the vacation's own columns) and the changes returned."""
    changes = ContentChanges()
    changes.drop_languages = [_tag(t, "--remove-language") for t in args.remove_language]
    if args.default_language is not None:
        fields["default_language"] = _tag(args.default_language, "--default-language") or None
    default_language = fields.get("default_language", existing.default_language if existing else None)
    if args.external_audience is not None:
        fields["external_audience"] = args.external_audience
    given = _given(args, message)
    if existing is None:
        fields["message"] = ""  # NOT NULL; check_content refuses a vacation with neither text nor HTML
    language = _tag(args.language, "--language") if args.language else None
    if language is None or language == default_language:
        columns: dict[str, Any] = {_DEFAULT_FIELDS[key]: value or None for key, value in given.items()}
        if "message" in columns:
            columns["message"] = columns["message"] or ""  # the column is NOT NULL: '' is "none"
        fields.update(columns)  # type: ignore[typeddict-item]
    else:
        if existing is None:
            raise AdminError("a new vacation needs its default message before one in --language")
        for audience in (INTERNAL, EXTERNAL):
            mine = {field: value for (aud, field), value in given.items() if aud == audience}
            if not mine:
                continue
            old = next(
                (
                    t
                    for t in (existing.translations if existing else ())
                    if (t.audience, t.language) == (audience, language)
                ),
                Translation(audience, language, None, None, None),
            )
            texts: dict[str, Any] = {field: value or None for field, value in mine.items()}
            changes.translations.append(dataclasses.replace(old, **texts))
    return changes


def check_content(vacation: Vacation) -> None:
    """Refuse a vacation with a message that would say nothing: a subject alone sends an empty body."""
    if not (vacation.message or vacation.html_message):
        raise AdminError("the vacation needs --message, --message-file, --html or --html-file")
    if vacation.external_subject and not (vacation.external_message or vacation.external_html_message):
        raise AdminError(
            "--external-subject needs an external message (--external-message or --external-html)"
        )
    for t in vacation.translations:
        if not (t.message or t.html_message):
            option = (
                "--message or --html" if t.audience == INTERNAL else "--external-message or --external-html"
            )
            raise AdminError(f"the {t.audience} message in {t.language} needs a text or HTML ({option})")
