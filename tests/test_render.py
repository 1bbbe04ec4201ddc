"""Template rendering: bounded in time and size, in-process and in the service's render child."""

from __future__ import annotations

import datetime as dt
import time
import tracemalloc
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from responder.decide.templates import MAX_SECONDS, Renderer, RenderError

TEMPLATES = {
    "ok.j2": "Hello {{ sender }}, back {{ end.strftime('%d %B %H:%M %Z') }}. {{ 'ab' * 2 }} {{ 2 ** 8 }}\n",
    "loops.j2": "{% for a in subject %}{% for b in subject %}{% for c in subject %}{% for d in subject %}"
    "{% endfor %}{% endfor %}{% endfor %}{% endfor %}done",
    "long.j2": "{% for a in subject %}{% for b in subject %}{{ subject }}{% endfor %}{% endfor %}",
    "times.j2": "{{ subject * 100000000 }}",
    "power.j2": "{{ 10 ** 100000000 }}",
    "center.j2": "{{ subject | center(1000000000) }}",
    "doubling.j2": "{% set ns = namespace(s=subject) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
}
VARIABLES = {
    "sender": "bob@example.org",
    "subject": "x" * 300,
    "end": dt.datetime(2027, 1, 4, 9, 0, tzinfo=ZoneInfo("Europe/Berlin")),
}


@pytest.fixture
def templates(tmp_path: Path) -> str:
    for name, text in TEMPLATES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child"])
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("loops.j2", "took longer than"),
        ("long.j2", "longer than 262144 characters"),
        ("times.j2", "a value longer than"),
        ("power.j2", "a value longer than"),
        ("center.j2", "a width beyond"),
    ],
)
def test_a_costly_template_is_cut_off(templates: str, isolated: bool, name: str, problem: str) -> None:
    renderer = Renderer(templates, isolated=isolated)
    try:
        began = time.monotonic()
        with pytest.raises(RenderError, match=problem):
            renderer.render(name, VARIABLES)
        assert time.monotonic() - began < MAX_SECONDS + 5
        # Nothing of it stays behind: the next render is an ordinary one.
        text = renderer.render("ok.j2", VARIABLES)
    finally:
        renderer.close()
    assert text == "Hello bob@example.org, back 04 January 09:00 CET. abab 256\n"


def test_the_render_child_is_killed_when_its_memory_runs_out(templates: str) -> None:
    renderer = Renderer(templates, isolated=True)
    try:
        began = time.monotonic()
        with pytest.raises(RenderError):
            renderer.render("doubling.j2", VARIABLES)
        assert time.monotonic() - began < MAX_SECONDS + 5
        assert renderer.render("ok.j2", VARIABLES).startswith("Hello")
    finally:
        renderer.close()


def test_template_errors_are_render_errors_in_the_child_too(templates: str) -> None:
    renderer = Renderer(templates, isolated=True)
    try:
        with pytest.raises(RenderError, match=r"missing\.j2"):
            renderer.render("missing.j2", VARIABLES)
        with pytest.raises(RenderError, match="undefined"):
            renderer.render("ok.j2", {"sender": "x"})
    finally:
        renderer.close()


@pytest.mark.parametrize(
    "text",
    [
        "{% set ns = namespace(s=subject) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s=subject) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(s=subject) %}{% for i in range(40) %}"
        "{% set ns.s = ns.s | replace('x', ns.s) %}{% endfor %}",
        "{{ ([subject] * 1000) | join }}",
        "{{ '%999999999s' % subject }}",
        "{{ '{:>999999999}'.format(subject) }}",
        "{{ '%999999999s' | format(subject) }}",
    ],
    ids=["concat", "plus", "replace", "join", "percent", "format-method", "format-filter"],
)
def test_values_that_double_or_widen_are_refused_before_they_are_built(tmp_path: Path, text: str) -> None:
    (tmp_path / "bomb.j2").write_text(text, encoding="utf-8")
    renderer = Renderer(str(tmp_path))
    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match=r"too large|longer than"):
            renderer.render("bomb.j2", VARIABLES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Built, any of these would take far more than the render's 256 KiB of output.
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated while refusing"


def test_ordinary_templates_render_as_before(templates: str) -> None:
    text = (
        "{{ sender ~ ' / ' ~ subject[:3] }} {{ [1, 2] + [3] }} {{ 'a' + 'b' }} {{ '%s!' % sender }} "
        "{{ '{}?'.format(sender) }} {{ ['a', 'b'] | join(', ') }} {{ 'xy' | replace('y', 'z') }} "
        "{{ '%-5s|' | format('ab') }} {{ 7 % 3 }} {{ 2 + 3 }}"
    )
    Path(templates, "plain.j2").write_text(text, encoding="utf-8")
    assert Renderer(templates).render("plain.j2", VARIABLES) == (
        "bob@example.org / xxx [1, 2, 3] ab bob@example.org! bob@example.org? a, b xz ab   | 1 5"
    )


def test_only_the_admins_templates_go_to_the_child(templates: str) -> None:
    """The packaged templates are rendered in the service's own process; an admin's in the child, also
    when it shadows a packaged name, and so is a name the loader refuses."""
    (Path(templates) / "vacation.txt.j2").write_text("admin's {{ message }}\n", encoding="utf-8")
    variables = {**VARIABLES, "message": "Away.", "end": None, "timezone": "UTC"}
    renderer = Renderer(templates, isolated=True)
    try:
        assert renderer.render(["vacation.de.txt.j2", "vacation.txt.j2"], variables).startswith("Away.")
        assert renderer.child is not None and renderer.child.process is None  # no child started
        assert renderer.render("vacation.txt.j2", variables) == "admin's Away.\n"
        assert renderer.child.process is not None
        with pytest.raises(RenderError, match="none of the templates given were found"):
            renderer.render("../vacation.txt.j2", variables)
    finally:
        renderer.close()
    packaged_only = Renderer("", isolated=True)
    assert packaged_only.child is None
    assert packaged_only.render("vacation.txt.j2", variables).startswith("Away.")
