#!/usr/bin/env python3
"""Benchmark: ``responder serve`` and Dovecot's LMTP server with Pigeonhole under Postfix's load tools.

Postfix's ``smtp-source -L`` (an LMTP client in C) sends the same messages, 16 sessions at a time (one
smtp-source per session, each with a sender of its own) and many transactions per connection as
Postfix's LMTP client does, to each server in turn; Postfix's
``smtp-sink`` (an SMTP server in C) is the relay both send their replies to and appends each reply
to one file, so that every reply is counted at the sink and checked for duplicates (by In-Reply-To). Both
tools cost little CPU, so what is measured is the servers.

Three workloads, interleaved round by round so that background load falls on both servers alike:

* ``list``: mail with ``Precedence: bulk`` (responder: header-suppressed; Dovecot: stored, no reply);
* ``no-vacation``: a recipient without a vacation (responder: decided; Dovecot: stored, no script);
* ``reply``: a recipient whose vacation answers every message (interval 0 on both sides), so every
  message costs a reply to the sink.

For each: messages per second (wall time of smtp-source, start to its last 250), CPU seconds per
message of all the server's processes (user + system, from /proc: live processes and the children
they reaped), and for ``reply`` the replies received at the sink and how many were duplicates.
Medians of ``--runs`` rounds. Then ``--long`` messages through responder alone (a mix of the three)
with the resident memory (VmRSS) of all its processes at the start and the end.

    python3 bench/postfix_load.py [--messages 2000] [--runs 3] [--sessions 16] [--long 100000]

Needs /usr/sbin/smtp-source and /usr/sbin/smtp-sink (Debian's postfix); the Dovecot rows need root,
/usr/sbin/dovecot with dovecot-lmtpd and dovecot-sieve. ``--python`` is the interpreter that runs
``responder serve`` (default: this checkout's .venv, else this interpreter).
"""

from __future__ import annotations

import argparse
import email.parser
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
DOVECOT = "/usr/sbin/dovecot"
SIEVEC = "/usr/bin/sievec"
AWAY = "away@example.com"
NOBODY = "nobody@example.com"
SENDER = "bob@example.org"
WORKLOADS = ("list", "no-vacation", "reply")
LIST_MESSAGE = (
    f"From: Team <{SENDER}>\r\nTo: {AWAY}\r\nSubject: weekly digest\r\nMessage-ID: <digest@example.org>\r\n"
    "Precedence: bulk\r\nList-Id: <team.example.org>\r\n\r\nThis week on the list.\r\n"
)
SIEVE = (
    'require ["vacation", "vacation-seconds"];\n'
    f'vacation :seconds 0 :addresses ["{AWAY}"] :subject "Away" "I am away.";\n'
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- processes: CPU and memory of a server's whole tree -------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pids(root: int) -> list[int]:
    tree, found, pending = _children(), [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(tree.get(pid, []))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, those they have reaped included."""
    total = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 12 to 15 after the name.
        total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def tree_rss(root: int) -> float:
    """Resident memory of ``root`` and its descendants in MiB."""
    total = 0
    for pid in tree_pids(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# --- the relay: smtp-sink dumping every message it gets ---------------------------------------------


class Sink:
    """smtp-sink appending every message to one file (a file per message costs the sink several
    times the CPU: the directory entry, the inode and the journal of each)."""

    def __init__(self, work: Path) -> None:
        # smtp-sink writes as nobody: the way to the dump directory must be open to it.
        work.chmod(work.stat().st_mode | 0o711)
        directory = work / "sink"
        directory.mkdir(exist_ok=True)
        directory.chmod(0o777)
        self.dump = directory / "replies"
        self.port = free_port()
        command = [SMTP_SINK, "-D", str(self.dump)]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.process = subprocess.Popen([*command, f"127.0.0.1:{self.port}", "256"])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def messages(self) -> list[bytes]:
        """The messages received since the last clear, each from smtp-sink's first header on."""
        try:
            text = self.dump.read_bytes()
        except FileNotFoundError:
            return []
        # Each message is written whole when its transaction ends; its dump starts with this line.
        return [b"X-Client-Addr: " + part for part in (b"\n" + text).split(b"\nX-Client-Addr: ") if part]

    def count(self) -> int:
        return len(self.messages())

    def clear(self) -> None:
        # Between runs, with no transaction open: the next one creates the file again.
        self.dump.unlink(missing_ok=True)

    def replies(self) -> tuple[int, int]:
        """(replies received, of which duplicates of an earlier one by In-Reply-To).

        A message without In-Reply-To (both servers set it) would be a dump cut or interleaved:
        the run fails rather than count it.
        """
        parser = email.parser.BytesHeaderParser()
        seen: set[str] = set()
        count = duplicates = 0
        for message in self.messages():
            key = parser.parsebytes(message).get("In-Reply-To")
            if key is None:
                raise SystemExit(f"a reply at the sink has no In-Reply-To: {message[:200]!r}")
            count += 1
            duplicates += str(key) in seen
            seen.add(str(key))
        return count, duplicates

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- the servers -------------------------------------------------------------------------------


class Server:
    name = ""
    socket: Path
    process: subprocess.Popen[bytes]

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def rss(self) -> float:
        return tree_rss(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _toml(sections: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


class Responder(Server):
    name = "responder"

    def __init__(self, work: Path, python: str, sink: Sink, extra: dict[str, dict[str, object]]) -> None:
        self.base = work / "responder"
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir()
        self.socket = self.base / "lmtp.sock"
        sections: dict[str, dict[str, object]] = {
            "database": {"url": f"sqlite:///{self.base}/responder.sqlite3"},
            "smtp": {"host": "127.0.0.1", "port": sink.port, "hostname": "mx.example.com"},
            "server": {"socket": f"unix:{self.socket}"},
            # smtp-source sends no XFORWARD (no client address to check SPF against); Dovecot
            # verifies nothing either.
            "verify": {"require": "off"},
            "reply": {"min_interval": "0s"},
            "limits": {
                "per_sender": "off",
                "per_sender_domain": "off",
                "per_recipient": "off",
                "global": "off",
            },
        }
        for name, values in extra.items():
            sections.setdefault(name, {}).update(values)
        self.config = self.base / "responder.toml"
        self.config.write_text(_toml(sections))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        admin = [python, "-m", "responder", "--config", str(self.config)]
        subprocess.run([*admin, "db", "upgrade"], check=True, env=env, capture_output=True)
        subprocess.run(
            [*admin, "vacation", "set", AWAY, "--message", "I am away.", "--interval", "0s"],
            check=True,
            env=env,
            capture_output=True,
        )
        self.log = (self.base / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [*admin, "serve"], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        _wait_for_socket(self.socket, self.base / "serve.log", self.process)


class Dovecot(Server):
    name = "dovecot"

    def __init__(self, work: Path, sink: Sink) -> None:
        self.base = work / "dovecot"
        shutil.rmtree(self.base, ignore_errors=True)
        for sub in ("run", "state", "home", "scripts"):
            (self.base / sub).mkdir(parents=True)
        user = pwd.getpwnam("nobody")
        os.chown(self.base / "home", user.pw_uid, user.pw_gid)
        self.socket = self.base / "run" / "lmtp"
        conf = self.base / "dovecot.conf"
        conf.write_text(_DOVECOT_CONF.format(base=self.base, port=sink.port))
        script = self.base / "scripts" / "away.sieve"
        script.write_text(SIEVE)
        # Compiled as root next to the script, which the mail user cannot write to.
        subprocess.run([SIEVEC, "-c", str(conf), str(script)], check=True)
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"dovecot did not start: {(self.base / 'dovecot.log').read_text()}")
            time.sleep(0.05)

    def clear_mail(self) -> None:
        # The mailboxes grow with every run; a fresh one per round keeps the rounds alike.
        for home in (self.base / "home").iterdir():
            shutil.rmtree(home, ignore_errors=True)


# Stores every message (maildir), runs the recipient's script if it has one, sends vacation replies
# through the sink; logs one line per message, as responder does.
_DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = lmtp
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:{base}/home/%n/Maildir
postmaster_address = postmaster@example.com
ssl = no
submission_host = 127.0.0.1:{port}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/home/%n
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  mail_plugins = sieve
}}
plugin {{
  sieve = file:{base}/scripts;active={base}/scripts/%n.sieve
  sieve_extensions = +vacation-seconds
  sieve_vacation_min_period = 0
  sieve_vacation_dont_check_recipient = yes
}}
"""


def _wait_for_socket(socket: Path, log: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


# --- one run -------------------------------------------------------------------------------------


@dataclass
class Result:
    rate: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def source_commands(
    workload: str, server: Server, messages: int, sessions: int, work: Path
) -> list[list[str]]:
    """One smtp-source per session, each with a sender of its own.

    A sender answered at most once per interval has one claim: the same sender sixteen times at once
    would queue on it, which real senders do not do (and the interval of 0 here makes every message
    one to answer).
    """
    commands = []
    for session in range(sessions):
        count = messages // sessions + (session < messages % sessions)
        if not count:
            continue
        sender = f"sender{session}@example.org"
        command = [SMTP_SOURCE, "-L", "-d", "-s", "1", "-m", str(count), "-f", sender]
        if workload == "list":
            message = work / "list.eml"
            message.write_text(LIST_MESSAGE)
            command += ["-t", AWAY, "-F", str(message)]
        elif workload == "no-vacation":
            command += ["-t", NOBODY, "-S", "question"]
        else:
            # smtp-source's own message: a fresh Message-Id every time, From and To as given.
            command += ["-t", AWAY, "-S", "question"]
        commands.append([*command, f"unix:{server.socket}"])
    return commands


def drive(commands: list[list[str]]) -> None:
    """Run the smtp-source processes at once; each must get 250 for every message."""
    # No -A: a status other than 250 (a 451 from either server) makes smtp-source fail.
    running = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    failures = []
    for process in running:
        _, errors = process.communicate(timeout=3600)
        if process.returncode != 0:
            failures.append(errors.decode(errors="replace").strip())
    if failures:
        raise SystemExit(f"smtp-source failed: {failures[0]}")


def run_once(workload: str, server: Server, sink: Sink, args: argparse.Namespace, result: Result) -> None:
    sink.clear()
    commands = source_commands(workload, server, args.messages, args.sessions, args.work)
    cpu = server.cpu()
    started = time.perf_counter()
    drive(commands)
    wall = time.perf_counter() - started
    if workload == "reply":
        # Dovecot hands the reply to the relay before it answers 250, responder right after (from
        # its outbox): give the sink a moment to receive and write them all.
        deadline = time.monotonic() + 30
        while sink.count() < args.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    cpu = server.cpu() - cpu
    result.rate.append(args.messages / wall)
    result.cpu_ms.append(cpu / args.messages * 1000)
    if workload == "reply":
        received, duplicates = sink.replies()
        result.replies.append(received)
        result.duplicates.append(duplicates)


def long_run(server: Responder, sink: Sink, args: argparse.Namespace) -> tuple[float, float, float]:
    """(RSS at the start, RSS at the end, messages/s) over ``--long`` messages of the three workloads."""
    chunk = min(args.long, 10_000)
    rss_start = server.rss()
    sent, started = 0, time.perf_counter()
    for number in range(0, args.long, chunk):
        count = min(chunk, args.long - number)
        workload = WORKLOADS[(number // chunk) % len(WORKLOADS)]
        drive(source_commands(workload, server, count, args.sessions, args.work))
        sink.clear()
        sent += count
        print(f"  long run: {sent} messages, RSS {server.rss():.1f} MiB", flush=True)
    return rss_start, server.rss(), sent / (time.perf_counter() - started)


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} CPUs ({model}), {system}, Python {platform.python_version()}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rows(results: dict[tuple[str, str], Result], args: argparse.Namespace) -> Iterator[str]:
    yield (
        f"{'server':<10} {'workload':<12} {'msgs/s':>8} {'cpu ms/msg':>11} {'replies at sink':>16} "
        f"{'dupes':>6}"
    )
    for (name, workload), result in results.items():
        if workload == "reply":
            replies = f"{int(_median([float(r) for r in result.replies]))}/{args.messages}"
            dupes = str(max(result.duplicates, default=0))
        else:
            replies, dupes = "-", "-"
        yield (
            f"{name:<10} {workload:<12} {_median(result.rate):>8.0f} {_median(result.cpu_ms):>11.2f} "
            f"{replies:>16} {dupes:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per workload and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--long", type=int, default=10_000, help="messages of the memory run (0: none)")
    parser.add_argument("--work", type=Path, default=None)
    venv = REPO / ".venv" / "bin" / "python"
    parser.add_argument("--python", default=str(venv) if venv.exists() else sys.executable)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="[server] workers (0: the default)")
    args = parser.parse_args()
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing: install Debian's postfix")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="responder-load-"))
    args.work.mkdir(parents=True, exist_ok=True)
    with_dovecot = not args.no_dovecot and os.geteuid() == 0 and os.path.exists(DOVECOT)
    if not args.no_dovecot and not with_dovecot:
        print("Dovecot rows skipped: they need root and /usr/sbin/dovecot", flush=True)
    load_before = os.getloadavg()
    print(f"machine: {machine()}; load average {load_before[0]:.2f} at the start", flush=True)

    sink = Sink(args.work)
    extra: dict[str, dict[str, object]] = {}
    if args.workers:
        extra["server"] = {"workers": args.workers}
    servers: list[Server] = [Responder(args.work, args.python, sink, extra)]
    try:
        if with_dovecot:
            servers.append(Dovecot(args.work, sink))
        results: dict[tuple[str, str], Result] = {
            (server.name, workload): Result() for workload in WORKLOADS for server in servers
        }
        for server in servers:  # warm both up: the first messages open pools and start processes
            run_once("reply", server, sink, argparse.Namespace(**{**vars(args), "messages": 200}), Result())
        for round_number in range(args.runs):
            for workload in WORKLOADS:
                for server in servers:
                    if isinstance(server, Dovecot):
                        server.clear_mail()
                    run_once(workload, server, sink, args, results[(server.name, workload)])
            print(f"round {round_number + 1} of {args.runs} done", flush=True)
        print()
        for row in _rows(results, args):
            print(row)
        load_after = os.getloadavg()
        print(
            f"\n{args.messages} messages per workload and run, {args.sessions} smtp-source -L sessions, "
            f"medians of {args.runs} runs; load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
        )
        responder = servers[0]
        assert isinstance(responder, Responder)
        if args.long:
            start, end, rate = long_run(responder, sink, args)
            print(
                f"responder RSS over {args.long} messages: {start:.1f} -> {end:.1f} MiB ({rate:.0f} msgs/s)"
            )
    finally:
        for server in servers:
            server.stop()
        sink.stop()


if __name__ == "__main__":
    main()
