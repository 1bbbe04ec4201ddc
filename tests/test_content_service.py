"""An HTML reply in the sender's language through `responder serve`, whose templates render in a child."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import vacation_set
from tests.lmtp_support import LmtpClient
from tests.sink import SmtpSink
from tests.test_service import ServiceFactory, socket_path, start_service

__all__ = ["socket_path", "start_service"]  # the fixtures, used by name below

ALICE = "alice@example.com"
BOB = "bob@example.org"


def test_the_service_sends_an_html_reply_in_the_senders_language(
    start_service: ServiceFactory, socket_path: Path, sink: SmtpSink, tmp_path: Path
) -> None:
    service = start_service()
    html = tmp_path / "de.html"
    html.write_text('<p>Bis <b>{{ end_date }}</b> weg.<img src="https://tracker.example/p.gif"></p>', "utf-8")
    vacation_set(
        service.config, ALICE, "--message", "Away.", "--default-language", "en", "--end", "2027-01-04"
    )
    vacation_set(service.config, ALICE, "--language", "de", "--html-file", str(html), "--subject", "Abwesend")
    client = LmtpClient(socket_path)
    client.greet()
    message = (
        f"From: Bob <{BOB}>\nTo: {ALICE}\nSubject: Frage\nMessage-ID: <1@example.org>\n"
        "Accept-Language: de-AT, en;q=0.1\n\nHallo.\n"
    ).encode()
    [(code, text)] = client.send_message(BOB, [ALICE], message)
    client.close()
    assert code == 250 and "reply" in text
    [sent] = sink.wait_for(1)
    reply = sent.message
    assert (reply["Subject"], reply["Content-Language"]) == ("Abwesend", "de")
    plain, rich = reply.get_body(("plain",)), reply.get_body(("html",))
    assert plain is not None and rich is not None
    # The German templates (vacation.de.*.j2), rendered by the service's render child.
    assert "Bis Montag, 4. Januar 2027 weg." in plain.get_content()
    assert "Ich bin ab Montag, 4. Januar 2027, 00:00 wieder erreichbar (UTC)." in plain.get_content()
    assert "<b>Montag, 4. Januar 2027</b>" in rich.get_content()
    assert "tracker.example" not in rich.get_content() and "<img" not in rich.get_content()
    assert "language=de(Accept-Language de-at)" in service.log()
