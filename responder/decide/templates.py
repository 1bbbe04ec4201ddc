"""Admin reply templates rendered in Jinja2's sandbox, bounded in time and size; never a partial text.

A template's cost can depend on what the sender wrote (its subject), so every render is cut off after
MAX_SECONDS or MAX_OUTPUT characters. In-process (the pipe hook, ``vacation set``) the clock is checked
on every line the template executes. The service renders the admin's templates in a child process
instead (``isolated``), whose address space is limited and which is killed at the time limit: there a
template can cost one render's failure, never the memory or the workers of the service. The packaged
templates, whose cost follows their bounded variables, are rendered in-process everywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment

from responder.decide.records import INTERNAL
from responder.mail.message import Envelope, Inbound
from responder.paths import resource_dir

if TYPE_CHECKING:
    from responder.decide.content import Content
    from responder.decide.records import Retirement, Vacation

# Far beyond any reply or bounce text a person reads.
MAX_OUTPUT = 256 * 1024
MAX_SECONDS = 2.0
# Address space of the render child: Python, Jinja2 and a few MiB of text.
CHILD_MEMORY = 512 * 1024 * 1024


class RenderError(Exception):
    """The template is missing, invalid, used an undefined variable, or went over a limit."""


class _Limit(Exception):
    """Raised inside the template's own code when a limit is passed."""


class _Clock:
    """A trace function for the frames of compiled templates: the render stops at its deadline."""

    def __init__(self, environment: _Sandbox, seconds: float) -> None:
        self.environment = environment
        self.deadline = time.monotonic() + seconds
        self.lines = 0

    def call(self, frame: FrameType, event: str, arg: object) -> Any:
        # Only template code is traced line by line; Jinja2's runtime and Python's run untraced.
        if frame.f_globals.get("environment") is self.environment:
            return self.line
        return None

    def line(self, frame: FrameType, event: str, arg: object) -> Any:
        self.lines += 1
        if self.lines % 64 == 0 and time.monotonic() > self.deadline:
            raise _Limit(f"took longer than {MAX_SECONDS:g}s")
        return self.line


class _Generator(CodeGenerator):
    """Compiles ``~`` (string concatenation) to a join that checks the length first."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_join((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


def _too_long(size: int) -> None:
    if size > MAX_OUTPUT:
        raise _Limit(f"a value longer than {MAX_OUTPUT} characters")


# A field width or precision of seven digits or more ("%9999999s", "{:>9999999}").
_HUGE_WIDTH = re.compile(r"\d{7,}")


class _Sandbox(SandboxedEnvironment):
    """Jinja2's sandbox, with every operator and filter that can build a large value in one step checked.

    Doubling a value forty times takes forty steps and a terabyte; each step is checked before it runs.
    """

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name in ("center", "indent", "wordwrap", "truncate", "format"):
            self.filters[name] = _bounded(self.filters[name], widths=name == "format")
        replace, join = self.filters["replace"], self.filters["join"]

        def bounded_replace(context: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
            text = str(value)
            _too_long(len(text) + text.count(str(old)) * len(str(new)))
            return replace(context, value, old, new, count)

        def bounded_join(context: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
            items = list(value)
            _too_long(sum(len(str(item)) for item in items) + len(str(d)) * len(items))
            return join(context, items, d, attribute)

        # Both take the eval context first, as the originals (pass_eval_context) do.
        vars(bounded_replace)["jinja_pass_arg"] = replace.jinja_pass_arg
        vars(bounded_join)["jinja_pass_arg"] = join.jinja_pass_arg
        self.filters["replace"], self.filters["join"] = bounded_replace, bounded_join

    @staticmethod
    def bounded_join(parts: tuple[Any, ...]) -> str:
        texts = [str(part) for part in parts]
        _too_long(sum(len(text) for text in texts))
        return "".join(texts)

    def wrap_str_format(self, value: Any) -> Any:
        # str.format and str.format_map, reached as attributes of a string.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and _HUGE_WIDTH.search(owner):
            raise _Limit("a field width too large")
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sized = (str, list, tuple)
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, sized) and isinstance(times, int):
                    _too_long(sum(len(str(item)) for item in sequence[:1000]) * times + len(sequence) * times)
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            _too_long(len(left) + len(right))
        elif operator == "%" and isinstance(left, str) and _HUGE_WIDTH.search(left):
            raise _Limit("a field width too large")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            _too_long(left.bit_length() * right // 8)
        return super().call_binop(context, operator, left, right)


def _bounded(function: Any, widths: bool = False) -> Any:
    """``function`` refusing a width beyond MAX_OUTPUT; with ``widths``, also one in a format string."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, int) and a > MAX_OUTPUT for a in (*args, *kwargs.values())):
            raise _Limit(f"a width beyond {MAX_OUTPUT}")
        # The format filter's first argument is a %-format string: "%999999999s" is a gigabyte.
        if widths and args and isinstance(args[0], str) and _HUGE_WIDTH.search(args[0]):
            raise _Limit("a field width too large")
        return function(*args, **kwargs)

    for attribute in ("jinja_pass_arg", "__name__", "__doc__"):
        if hasattr(function, attribute):
            setattr(bounded, attribute, getattr(function, attribute))
    return bounded


# What ``vacation set`` and ``bounce set`` pass for what only a message tells: the one function per
# response kind below is called with these there and with the real values at delivery, so a template
# refused at neither place cannot fail for a variable the other did not have.
SAMPLE_SENDER = "sender@example.org"
SAMPLE_SUBJECT = "Sample subject"
# A message without header fields: the vacation's default language, for checks at ``vacation set``.
_NO_MESSAGE = Inbound(Envelope(SAMPLE_SENDER, SAMPLE_SENDER), b"\r\n")


def reply_variables(
    vacation: Vacation,
    sender: str,
    subject: str,
    interval: dt.timedelta,
    content: Content | None = None,
    audience: str = INTERNAL,
) -> dict[str, Any]:
    """The variables of a reply template: the vacation's text and schedule, and the message answered.

    ``content`` is the message chosen for the sender's audience and language (the vacation's default
    message when None); its placeholders are filled in here, so templates get finished texts.
    """
    from responder.config.values import format_duration
    from responder.decide.content import choose_content, fill, fill_html, placeholder_values
    from responder.mail.html import html_to_text, sanitize

    if content is None:
        content = choose_content(vacation, INTERNAL, _NO_MESSAGE)
    language = content.language.language
    values = placeholder_values(vacation, language, subject)
    html_message = sanitize(fill_html(content.html_message, values)) if content.html_message else None
    message = fill(content.message, values)
    if not message and html_message:
        message = html_to_text(html_message)
    zone = ZoneInfo(vacation.timezone)
    return {
        **values,
        "message": message,
        "html_message": html_message or "",
        "reply_subject": fill(content.subject, values) if content.subject else None,
        "recipient": vacation.address,
        "sender": sender,
        "subject": subject,
        "start": vacation.starts_at.astimezone(zone) if vacation.starts_at else None,
        "end": vacation.ends_at.astimezone(zone) if vacation.ends_at else None,
        "timezone": vacation.timezone,
        "interval": format_duration(interval.total_seconds()),
        "language": language or "",
        "audience": audience,
    }


def template_names(name: str, language: str | None) -> list[str]:
    """``name`` for ``language`` first, then for its shorter forms, then as it is.

    ``vacation.txt.j2`` in de-CH: ``vacation.de-CH.txt.j2``, ``vacation.de.txt.j2``, ``vacation.txt.j2``.
    """
    stem, dot, rest = name.partition(".")
    names: list[str] = []
    tag = language or ""
    while tag and dot:
        names.append(f"{stem}.{tag}.{rest}")
        tag = tag.rpartition("-")[0]
    return [*names, name]


def html_template_for(text_template: str | None, default_html: str) -> str:
    """The HTML counterpart of a vacation's own text template (``.txt.`` read as ``.html.``)."""
    if text_template and ".txt." in text_template:
        return text_template.replace(".txt.", ".html.")
    return default_html


def bounce_variables(
    retirement: Retirement, sender: str, subject: str, reporting_mta: str, now: dt.datetime
) -> dict[str, Any]:
    """The variables of the bounce template: the retirement's text and status, and the message bounced."""
    return {
        "message": retirement.message,
        "recipient": retirement.address,
        "sender": sender,
        "subject": subject,
        "status": retirement.safe_status,
        "date": now.astimezone(ZoneInfo(retirement.timezone)),
        "reporting_mta": reporting_mta,
    }


class Renderer:
    """Looks templates up in the admin's directory first, then in the packaged defaults."""

    def __init__(self, templates_dir: str = "", isolated: bool = False) -> None:
        self.templates_dir = templates_dir
        search = [Path(templates_dir)] if templates_dir else []
        search.append(resource_dir("templates"))
        self.environment = _Sandbox(
            loader=FileSystemLoader([str(p) for p in search]),
            undefined=StrictUndefined,
            # The HTML templates (vacation.html.j2) escape what they print unless told |safe.
            autoescape=_is_html,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.packaged = search[-1]
        # Only the admin's templates can cost more than their output: the packaged ones are linear
        # in their variables, so they are rendered here, and a render child exists only for a
        # directory of the admin's.
        self.child: _Child | None = _Child(templates_dir) if isolated and templates_dir else None

    def warm(self) -> None:
        """Start the render child now rather than at the first render."""
        if self.child is not None:
            with self.child.lock:
                self.child.start()

    def render(self, name: str | Sequence[str], variables: Mapping[str, Any]) -> str:
        """Render the first of ``name`` (one name or several) that exists."""
        if self.child is not None and self._admin_template(name):
            return self.child.render(name, variables)
        return self.render_here(name, variables)

    def _admin_template(self, names: str | Sequence[str]) -> bool:
        """Whether the template that ``names`` selects (as select_template does) is the admin's:
        True also for a name the loader would refuse, so that the child reports it."""
        choices = (names,) if isinstance(names, str) else tuple(names)
        for name in choices:
            parts = name.split("/")
            if name.startswith("/") or ".." in parts or "\\" in name:
                return True
            if (Path(self.templates_dir) / name).is_file():
                return True
            if (self.packaged / name).is_file():
                return False
        return True

    def render_here(self, names: str | Sequence[str], variables: Mapping[str, Any]) -> str:
        """Render in this thread, within MAX_SECONDS and MAX_OUTPUT."""
        choices = [names] if isinstance(names, str) else list(names)
        name = choices[-1]
        clock = _Clock(self.environment, MAX_SECONDS)
        previous = sys.gettrace()
        sys.settrace(clock.call)
        try:
            parts: list[str] = []
            size = 0
            template = self.environment.select_template(choices)
            name = template.name or name
            for part in template.generate(**variables):
                size += len(part)
                if size > MAX_OUTPUT:
                    raise _Limit(f"longer than {MAX_OUTPUT} characters")
                if time.monotonic() > clock.deadline:
                    raise _Limit(f"took longer than {MAX_SECONDS:g}s")
                parts.append(part)
            return "".join(parts)
        except TemplateError as exc:
            # A syntax error names the template it is in (one of ``choices``, before ``name`` is known).
            name = str(getattr(exc, "name", None) or name)
            raise RenderError(f"template {name}: {exc.message or exc.__class__.__name__}") from None
        except _Limit as exc:
            raise RenderError(f"template {name}: {exc}") from None
        except Exception as exc:  # sandbox violations and errors raised inside filters
            raise RenderError(f"template {name}: {exc.__class__.__name__}: {exc}") from None
        finally:
            sys.settrace(previous)

    def close(self) -> None:
        if self.child is not None:
            self.child.close()


# -- the render child -------------------------------------------------------------------------------


def _is_html(name: str | None) -> bool:
    return bool(name) and (".html." in str(name) or str(name).endswith(".html"))


def _encode(variables: Mapping[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for key, value in variables.items():
        if isinstance(value, dt.datetime):
            zone = value.tzinfo.key if isinstance(value.tzinfo, ZoneInfo) else ""
            encoded[key] = {"datetime": value.isoformat(), "zone": zone}
        else:
            encoded[key] = value
    return encoded


def _decode(variables: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in variables.items():
        if isinstance(value, dict) and "datetime" in value:
            moment = dt.datetime.fromisoformat(value["datetime"])
            decoded[key] = moment.astimezone(ZoneInfo(value["zone"])) if value["zone"] else moment
        else:
            decoded[key] = value
    return decoded


def _write(stream: IO[bytes], message: object) -> None:
    data = json.dumps(message).encode("utf-8", "surrogatepass")
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    header = stream.read(4)
    if len(header) < 4:
        raise EOFError
    data = stream.read(int.from_bytes(header, "big"))
    return json.loads(data.decode("utf-8", "surrogatepass"))


class _Child:
    """One render process, started on first use and again after it was killed; one render at a time."""

    def __init__(self, templates_dir: str) -> None:
        self.templates_dir = templates_dir
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from responder.decide.templates import child_main; child_main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "RESPONDER_TEMPLATES_DIR": self.templates_dir},
            )
        return self.process

    def render(self, names: str | Sequence[str], variables: Mapping[str, Any]) -> str:
        name = names if isinstance(names, str) else names[-1]
        with self.lock:
            process = self.start()
            assert process.stdin is not None and process.stdout is not None
            try:
                _write(process.stdin, {"name": names, "variables": _encode(variables)})
            except (OSError, ValueError) as exc:
                self._kill()
                raise RenderError(f"template {name}: the render process failed: {exc}") from None
            # A render that does not end in time is ended by killing the child.
            result = _read_within(process.stdout.fileno(), MAX_SECONDS + 1)
            if result is None:
                self._kill()
                raise RenderError(f"template {name}: took longer than {MAX_SECONDS:g}s or ran out of memory")
        if "error" in result:
            raise RenderError(str(result["error"]))
        return str(result["text"])

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self.process = None

    def close(self) -> None:
        if not self.lock.acquire(timeout=0.1):
            # A render is in flight: ending the child ends it (as a render error).
            process = self.process
            if process is not None:
                process.kill()
            return
        try:
            if self.process is not None and self.process.poll() is None:
                assert self.process.stdin is not None
                self.process.stdin.close()  # the child ends at the end of its input
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(2)
            self._kill()
        finally:
            self.lock.release()


def _read_within(fd: int, seconds: float) -> Any:
    """The child's next answer (as _read takes it), or None when it does not come within ``seconds``
    or the child ended. Reads the pipe directly, never past the answer: the child sends nothing else."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    received = bytearray()

    def fill(size: int) -> bool:
        while len(received) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return False
            try:
                chunk = os.read(fd, size - len(received))
            except OSError:
                return False
            if not chunk:
                return False
            received.extend(chunk)
        return True

    if not fill(4):
        return None
    if not fill(4 + int.from_bytes(received[:4], "big")):
        return None
    try:
        return json.loads(received[4:].decode("utf-8", "surrogatepass"))
    except ValueError:
        return None


def child_main() -> None:
    """The render child: requests on stdin, answers on stdout, until stdin ends."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    renderer = Renderer(os.environ.get("RESPONDER_TEMPLATES_DIR", ""))
    while True:
        try:
            request = _read(sys.stdin.buffer)
        except EOFError:
            return
        try:
            text = renderer.render_here(request["name"], _decode(request["variables"]))
        except RenderError as exc:
            _write(sys.stdout.buffer, {"error": str(exc)})
        except MemoryError:
            _write(sys.stdout.buffer, {"error": f"template {request['name']}: ran out of memory"})
        else:
            _write(sys.stdout.buffer, {"text": text})
