#!/usr/bin/env python3
"""Benchmark: responder's pipe hook and LMTP service against an empty Python start and Dovecot's sieve-test.

One invocation, one machine, one table. It measures, side by side and interleaved round by round so
that background load falls on every row alike:

* ``python -c pass``, the floor, for each interpreter;
* ``python -m responder deliver`` standalone (no service) and through the service (thin client), for a
  header-suppressed message, a recipient without a vacation, and a reply sent to a loopback SMTP sink;
* ``sieve-test`` running a vacation script on the same messages, when Dovecot's Pigeonhole is installed;
* the service's messages per second with 1, 4 and 16 concurrent clients, decisions and replies;
* the reply row without and with DKIM signing (RSA 2048, RSA 2048 plus ed25519), for the lone hook
  and for the service's replies per second;
* the service's resident memory over ``--memory-messages`` messages (100,000 by default).

Wall time and CPU time (user + system of the child, from wait4) are medians; ratios are to the floor
of the same interpreter in the same phase. The standalone rows run while no service holds the SQLite
file open: closing the last connection checkpoints the WAL, which is part of a lone hook's cost.

    python3 bench/run.py [--runs 30] [--memory-messages 100000] [--work /tmp/responder-bench]

The Debian interpreter (/usr/bin/python3) gets a venv with responder installed editable in WORK (made
once, with pip); the interpreter running this script is measured as well.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from responder.lmtp import client as lmtpclient  # noqa: E402 - the repository, not an installed copy

AWAY = "away@example.com"
NOBODY = "nobody@example.com"
SINK = """
import asyncio
from aiosmtpd.smtp import SMTP

class Handler:
    async def handle_DATA(self, server, session, envelope):
        print("m", flush=True)  # one line per message: the bench counts them
        return "250 2.0.0 Ok"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="sink"), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
SIEVE = (
    'require ["vacation"];\nvacation :days 7 :addresses ["away@example.com"] :subject "Away" "I am away.";\n'
)


def message(sender: str, to: str, bulk: bool = False, number: int = 0) -> bytes:
    lines = [
        f"From: Sender <{sender}>",
        f"To: {to}",
        f"Subject: question {number}",
        f"Message-ID: <{number}.{sender}>",
        "Date: Fri, 27 Nov 2026 12:00:00 +0000",
    ]
    if bulk:
        lines.append("Precedence: bulk")
    return ("\n".join(lines) + "\n\nHello, are you there?\n").encode()


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def median(self) -> tuple[float, float]:
        return statistics.median(self.wall) * 1000, statistics.median(self.cpu) * 1000


def run_once(command: list[str], stdin: bytes, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one child process; it must exit 0."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(stdin)
    process.stdin.close()
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}: {errors.decode()}")
    return wall, usage.ru_utime + usage.ru_stime


@dataclass
class Interpreter:
    name: str
    python: str
    version: str = ""

    def __post_init__(self) -> None:
        self.version = subprocess.check_output(
            [self.python, "-c", "import platform; print(platform.python_version())"], text=True
        ).strip()


def debian_venv(work: Path) -> Interpreter | None:
    base = Path("/usr/bin/python3")
    if not base.exists():
        return None
    venv = work / "venv-debian"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} (pip install -e {REPO}) ...", flush=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", str(REPO), "aiosmtpd"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        # Installed again (no dependencies): the `responder` command written by an older checkout
        # may differ from this one's.
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return Interpreter("debian venv", str(python))


def responder_command(python: str) -> list[str]:
    """The command the MTA runs: the ``responder`` script installed next to ``python`` (as master.cf
    names it), else ``python -m responder`` (whose runpy start costs some 3 ms more)."""
    script = Path(python).parent / "responder"
    return [str(script)] if script.exists() else [python, "-m", "responder"]


def hook_env() -> dict[str, str]:
    # What Postfix's pipe(8) gives a command: next to nothing.
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.interpreters: list[Interpreter] = []
        self.rows: list[tuple[str, Samples, Samples]] = []
        self.phases = 0  # senders of reply runs are unique across phases, not only within one
        self.notes: list[str] = []
        self.sink: subprocess.Popen[bytes] | None = None
        self.service: subprocess.Popen[bytes] | None = None

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.work.exists():
            state = ("responder.sqlite3", "responder.sqlite3-wal", "responder.sqlite3-shm")
            for stale in (*state, "lmtp.sock", "lmtp-signed.sock"):
                (self.work / stale).unlink(missing_ok=True)
            shutil.rmtree(self.work / "dkim", ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        debian = debian_venv(self.work)
        if debian is not None:
            self.interpreters.append(debian)
        current = Interpreter("this python", os.path.realpath(sys.executable))
        if debian is None or Path(current.python) != Path(debian.python).resolve():
            self.interpreters.append(current)
        for interpreter in self.interpreters:
            # Bytecode written now: the environment may forbid writing it later (PYTHONDONTWRITEBYTECODE).
            subprocess.run(
                [interpreter.python, "-m", "compileall", "-q", str(REPO / "responder")], check=True
            )
        self.main = self.interpreters[0]
        self.sink = subprocess.Popen(
            [self.main.python, "-c", SINK], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert self.sink.stdout is not None
        port = int(self.sink.stdout.readline())
        # The sink's lines, counted: a reply through the service is sent after the hook has ended,
        # and the next sample must not share the CPU with that send.
        self.received = 0
        self.arrived = threading.Condition()
        threading.Thread(target=self._count_sink, args=(self.sink.stdout,), daemon=True).start()
        database = f"sqlite:///{self.work / 'responder.sqlite3'}"
        common = (
            f'[database]\nurl = "{database}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nhostname = "bench.example"\n'
            # No DNS here; rate limits on, so that counting them is part of the cost, but never reached.
            '[verify]\nrequire = "off"\n'
            '[limits]\nper_sender = "10000000/1h"\nper_sender_domain = "10000000/1h"\n'
            'per_recipient = "10000000/1h"\nglobal = "10000000/1h"\n'
        )
        self.standalone = self.work / "standalone.toml"
        self.standalone.write_text(common, encoding="utf-8")
        self.socket = self.work / "lmtp.sock"
        self.with_service = self.work / "service.toml"
        self.with_service.write_text(common + f'[server]\nsocket = "unix:{self.socket}"\n', encoding="utf-8")
        self.responder(self.standalone, "db", "upgrade")
        self.responder(self.standalone, "vacation", "set", AWAY, "--message", "I am away.")
        self.setup_signing(common)

    def setup_signing(self, common: str) -> None:
        """Keys for the vacation's domain from ``responder dkim keygen``, and a config per signing row."""
        keys = self.work / "dkim"
        keys.mkdir(mode=0o700)
        signing = f'[dkim]\nkeys_dir = "{keys}"\n'
        self.signing = {
            "unsigned": self.standalone,
            "signed rsa 2048": self.work / "signed-rsa.toml",
            "signed rsa 2048 + ed25519": self.work / "signed-ed25519.toml",
        }
        self.signing["signed rsa 2048"].write_text(common + signing, encoding="utf-8")
        self.signing["signed rsa 2048 + ed25519"].write_text(
            common + signing + "ed25519 = true\n", encoding="utf-8"
        )
        config = self.signing["signed rsa 2048 + ed25519"]
        self.responder(config, "dkim", "keygen", AWAY.partition("@")[2], "--bits", "2048")
        self.responder(config, "dkim", "keygen", AWAY.partition("@")[2], "--algorithm", "ed25519")
        self.signed_socket = self.work / "lmtp-signed.sock"
        self.signed_service = self.work / "service-signed.toml"
        self.signed_service.write_text(
            common + f'[server]\nsocket = "unix:{self.signed_socket}"\n' + signing + "ed25519 = true\n",
            encoding="utf-8",
        )

    def responder(self, config: Path, *args: str) -> None:
        subprocess.run(
            [self.main.python, "-m", "responder", "--config", str(config), *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start_service(self, config: Path | None = None, socket: Path | None = None) -> None:
        self.socket = socket or self.socket
        self.service_log = (self.work / "service.log").open("wb")
        self.service = subprocess.Popen(
            [self.main.python, "-m", "responder", "--config", str(config or self.with_service), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self.service_log,
            stderr=subprocess.STDOUT,
            env=hook_env(),
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self.service.poll() is not None:
                raise SystemExit("the service did not start; see " + str(self.work / "service.log"))
            time.sleep(0.05)

    def stop_service(self) -> None:
        assert self.service is not None
        self.service.send_signal(signal.SIGTERM)
        self.service.wait(60)
        self.service_log.close()
        self.service = None

    def stop(self) -> None:
        for process in (self.service, self.sink):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.service is not None:
            self.service_log.close()

    # -- single messages --------------------------------------------------------------------------

    CASES = ("header-suppressed", "no vacation", "reply to the sink")

    def _count_sink(self, lines: IO[bytes]) -> None:
        for _ in lines:
            with self.arrived:
                self.received += 1
                self.arrived.notify_all()

    def settled(self, expected: int) -> None:
        """Wait (up to 10 s) until the sink has ``expected`` messages in all."""
        with self.arrived:
            self.arrived.wait_for(lambda: self.received >= expected, timeout=10)

    def case(self, label: str, tag: str) -> tuple[str, str, bytes]:
        """(sender, recipient, message) of one run; every reply run has a sender of its own."""
        if label == "header-suppressed":
            return "bob@example.org", AWAY, message("bob@example.org", AWAY, bulk=True)
        if label == "no vacation":
            return "bob@example.org", NOBODY, message("bob@example.org", NOBODY)
        sender = f"{tag}@example.org"
        return sender, AWAY, message(sender, AWAY)

    def phase(self, title: str, config: Path, sieve: bool, extra: tuple[str, ...] = ()) -> None:
        self.phases += 1
        floors = {i.name: Samples() for i in self.interpreters}
        hooks: dict[tuple[str, str], Samples] = {}
        sieve_samples: dict[str, Samples] = {}
        env = hook_env()
        for number in range(self.args.runs):
            for index, interpreter in enumerate(self.interpreters):
                floors[interpreter.name].add(*run_once([interpreter.python, "-c", "pass"], b"", env))
                for label in self.CASES:
                    # A sender answered in an earlier phase would be suppressed by the interval.
                    tag = f"p{self.phases}i{index}r{number}"
                    sender, recipient, data = self.case(label, tag)
                    command = [
                        *responder_command(interpreter.python), "--config", str(config), "deliver",
                        "--sender", sender, "--recipient", recipient, "--queue-id", f"B{number}", *extra,
                    ]  # fmt: skip
                    before = self.received
                    hooks.setdefault((interpreter.name, label), Samples()).add(*run_once(command, data, env))
                    if label == "reply to the sink":
                        self.settled(before + 1)
                    if sieve and interpreter is self.main:
                        sieve_samples.setdefault(label, Samples()).add(
                            *self.sieve_once(sender, recipient, data)
                        )
        for interpreter in self.interpreters:
            floor = floors[interpreter.name]
            self.rows.append((f"{title}: {interpreter.name}, python -c pass", floor, floor))
            for label in self.CASES:
                samples = hooks[(interpreter.name, label)]
                self.rows.append((f"{title}: {interpreter.name}, deliver {label}", samples, floor))
        for label, samples in sieve_samples.items():
            self.rows.append((f"{title}: sieve-test vacation, {label}", samples, floors[self.main.name]))

    def signing_phase(self) -> None:
        """The lone hook's reply to the sink, unsigned and signed, interleaved run by run."""
        floor = Samples()
        rows = {label: Samples() for label in self.signing}
        env = hook_env()
        for number in range(self.args.runs):
            floor.add(*run_once([self.main.python, "-c", "pass"], b"", env))
            for label, config in self.signing.items():
                sender = f"sig{len(label)}r{number}@example.org"
                command = [
                    *responder_command(self.main.python), "--config", str(config), "deliver",
                    "--sender", sender, "--recipient", AWAY, "--queue-id", f"S{number}",
                ]  # fmt: skip
                rows[label].add(*run_once(command, message(sender, AWAY), env))
        self.rows.append((f"signing: {self.main.name}, python -c pass", floor, floor))
        for label, samples in rows.items():
            self.rows.append((f"signing: {self.main.name}, deliver reply, {label}", samples, floor))

    def signed_throughput(self) -> list[tuple[int, float]]:
        """The service's replies per second with both signatures on."""
        results = []
        offset = 30_000_000
        for clients in (1, 16):
            count = self.args.throughput_messages * (1 if clients == 1 else 2)
            self.burst(20, clients, True, offset)  # warm-up: keys, connections
            offset += 20
            results.append((clients, self.burst(count, clients, True, offset)))
            offset += count
        return results

    def setup_sieve(self) -> bool:
        if shutil.which("sieve-test") is None:
            self.notes.append("sieve-test not installed: no Sieve rows")
            return False
        self.sieve_script = self.work / "vacation.sieve"
        self.sieve_script.write_text(SIEVE, encoding="utf-8")
        mail = self.work / "mail"
        mail.mkdir(exist_ok=True)
        run = self.work / "dovecot-run"
        run.mkdir(exist_ok=True)
        # sieve-test drops to mail_uid (nobody when run as root), which must still reach these files.
        os.chmod(self.work, 0o755)  # noqa: S103
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.dovecot_conf = self.work / "dovecot.conf"
        self.dovecot_conf.write_text(
            f"mail_uid = {user}\nmail_gid = {'nogroup' if user == 'nobody' else user}\n"
            f"base_dir = {run}\nstate_dir = {run}\nmail_location = maildir:{mail}\n"
            "protocols =\nlog_path = /dev/null\n",
            encoding="utf-8",
        )
        return True

    def sieve_once(self, sender: str, recipient: str, data: bytes) -> tuple[float, float]:
        # sieve-test reads the message from a file; it is written first, outside the timing.
        path = self.work / "sieve-message.eml"
        path.write_bytes(data)
        command = [
            "sieve-test", "-c", str(self.dovecot_conf), "-r", recipient, "-f", sender,
            str(self.sieve_script), str(path),
        ]  # fmt: skip
        return run_once(command, b"", hook_env())

    # -- throughput and memory --------------------------------------------------------------------

    def deliver(self, sender: str, recipient: str, number: int) -> str:
        outcome, problem = lmtpclient.deliver(
            f"unix:{self.socket}",
            sender=sender,
            recipient=recipient,
            original_recipient="",
            client_address="192.0.2.1",
            helo="mx.example.org",
            queue_id=f"T{number}",
            raw=message(sender, recipient, number=number),
            connect_timeout=10,
            timeout=120,
        )
        if outcome != lmtpclient.DECIDED:
            raise SystemExit(f"the service did not decide message {number}: {outcome} {problem}")
        return outcome

    def burst(self, count: int, clients: int, replies: bool, offset: int) -> float:
        def one(number: int) -> str:
            if replies:
                return self.deliver(f"r{number}@example.org", AWAY, number)
            return self.deliver("bob@example.org", NOBODY, number)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(offset, offset + count)))
        return count / (time.perf_counter() - start)

    def throughput(self) -> list[tuple[int, float, float]]:
        results = []
        offset = 10_000_000
        for clients in (1, 4, 16):
            count = self.args.throughput_messages * (1 if clients == 1 else 2)
            self.burst(50, clients, False, offset)  # warm-up
            offset += 50
            decisions = self.burst(count, clients, False, offset)
            offset += count
            before = self.received
            replies = self.burst(count, clients, True, offset)
            self.settled(before + count)  # the sends after the answers, before the next burst
            offset += count
            results.append((clients, decisions, replies))
        return results

    def rss(self) -> tuple[float, float]:
        assert self.service is not None
        values = {}
        for line in Path(f"/proc/{self.service.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def memory(self) -> list[tuple[int, float, float]]:
        total = self.args.memory_messages
        step = max(1000, total // 20)
        samples = [(0, *self.rss())]
        done = 0
        offset = 20_000_000
        while done < total:
            count = min(step, total - done)
            # Nine decisions without a vacation to one reply, from ever new senders.
            replies = count // 10
            self.burst(count - replies, 16, False, offset + done)
            self.burst(replies, 16, True, offset + done + count)
            done += count
            samples.append((done, *self.rss()))
        return samples

    # -- report ------------------------------------------------------------------------------------

    def report(
        self,
        throughput: list[tuple[int, float, float]],
        memory: list[tuple[int, float, float]],
        signed: list[tuple[int, float]] | None = None,
    ) -> None:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        print()
        print(f"machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}")
        for interpreter in self.interpreters:
            print(f"  {interpreter.name}: Python {interpreter.version} ({interpreter.python})")
        print(f"medians of {self.args.runs} runs; ratio = median / floor of the same interpreter and phase")
        print()
        width = max(len(row[0]) for row in self.rows) + 2
        print(f"{'':{width}}{'wall ms':>9}{'x floor':>9}{'cpu ms':>9}{'x floor':>9}")
        for label, samples, floor in self.rows:
            wall, cpu_ms = samples.median
            floor_wall, floor_cpu = floor.median
            print(f"{label:{width}}{wall:9.1f}{wall / floor_wall:9.2f}{cpu_ms:9.1f}{cpu_ms / floor_cpu:9.2f}")
        if throughput:
            print()
            print("LMTP service, messages per second (one connection per message, as the thin client does):")
            print(f"{'clients':>10}{'decisions/s':>14}{'replies/s':>12}")
            for clients, decisions, replies in throughput:
                print(f"{clients:>10}{decisions:>14.0f}{replies:>12.0f}")
        if signed:
            print()
            print("LMTP service with DKIM signing (rsa 2048 + ed25519), replies per second:")
            print(f"{'clients':>10}{'replies/s':>12}")
            for clients, replies in signed:
                print(f"{clients:>10}{replies:>12.0f}")
        if memory:
            print()
            print("service memory (MiB) over messages (nine decisions to one reply, 16 clients):")
            for done, rss, hwm in memory:
                print(f"{done:>10} messages  RSS {rss:7.1f}  peak {hwm:7.1f}")
            settled = next((rss for done, rss, _ in memory if done >= memory[-1][0] / 10), memory[0][1])
            growth = memory[-1][1] - settled
            verdict = "flat" if growth <= max(5.0, settled * 0.1) else "GROWING"
            print(
                f"RSS after the first tenth {settled:.1f} MiB, at the end {memory[-1][1]:.1f} MiB: {verdict}"
            )
        print()
        self.targets(throughput, memory)
        if signed:
            replies = signed[-1][1]
            verdict = "met" if replies >= 100 else "MISSED"
            print(f"target 16 clients >= 100 replies/s, signed: {replies:.0f} {verdict}")
        for note in self.notes:
            print(f"note: {note}")

    def targets(
        self, throughput: list[tuple[int, float, float]], memory: list[tuple[int, float, float]]
    ) -> None:
        """The performance targets, judged on the Debian interpreter (wall and CPU alike)."""
        ratios = {}
        for label, samples, floor in self.rows:
            if label.startswith(("standalone: " + self.main.name, "via service: " + self.main.name)):
                (wall, cpu), (floor_wall, floor_cpu) = samples.median, floor.median
                ratios[label] = (wall / floor_wall, cpu / floor_cpu)

        def verdict(ok: bool) -> str:
            return "met" if ok else "MISSED"

        header = ratios[f"standalone: {self.main.name}, deliver header-suppressed"]
        print(
            f"target standalone header-suppressed <= 5x floor: wall {header[0]:.2f}x, cpu {header[1]:.2f}x",
            end=" ",
        )
        print(verdict(max(header) <= 5))
        for label in self.CASES:
            wall, cpu = ratios[f"via service: {self.main.name}, deliver {label}"]
            print(f"target thin client <= 2x floor, {label}: wall {wall:.2f}x {verdict(wall <= 2)},", end=" ")
            print(f"cpu {cpu:.2f}x {verdict(cpu <= 2)}")
        if throughput:
            _, decisions, replies = throughput[-1]
            print(f"target 16 clients >= 300 decisions/s: {decisions:.0f} {verdict(decisions >= 300)}")
            print(f"target 16 clients >= 100 replies/s: {replies:.0f} {verdict(replies >= 100)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of every single-message row")
    parser.add_argument("--throughput-messages", type=int, default=1000, help="messages per throughput row")
    parser.add_argument("--memory-messages", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "responder-bench", help="scratch directory"
    )
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.setup()
        sieve = bench.setup_sieve()
        print("phase 1: no service running (standalone hook) ...", flush=True)
        bench.phase("standalone", bench.standalone, sieve=False)
        print("phase 1b: the lone hook's reply, unsigned and DKIM-signed ...", flush=True)
        bench.signing_phase()
        bench.start_service()
        print("phase 2: service running (thin client, sieve-test) ...", flush=True)
        bench.phase("via service", bench.with_service, sieve=sieve)
        print("phase 3: service named by deliver --service ...", flush=True)
        bench.phase(
            "via --service", bench.with_service, sieve=False, extra=("--service", f"unix:{bench.socket}")
        )
        print("throughput ...", flush=True)
        throughput = bench.throughput()
        print("throughput with DKIM signing ...", flush=True)
        bench.stop_service()
        bench.start_service(bench.signed_service, bench.signed_socket)
        signed = bench.signed_throughput()
        memory: list[tuple[int, float, float]] = []
        if args.memory_messages:
            print(f"memory over {args.memory_messages} messages ...", flush=True)
            memory = bench.memory()
    finally:
        bench.stop()
    bench.report(throughput, memory, signed)


if __name__ == "__main__":
    main()
