"""A Deployment's rolling update, played through a real HAProxy under wrk load.

What Kubernetes does with ``maxSurge: 1, maxUnavailable: 0`` and two
replicas, with HAProxy in the part of the Service: it sends traffic only to
instances whose readiness check passes, and learns that an instance is
stopping only from that check (as endpoints learn it from the readiness
probe, with a delay), never from the instance's exit. Like kube-proxy, it
does not retry a failed request elsewhere.

    serving: A, B          (wrk load through HAProxy starts)
    start C, wait until HAProxy sees it UP; SIGTERM A, wait until A exits
    start D, wait until HAProxy sees it UP; SIGTERM B, wait until B exits
    (load stops)

HAProxy has four server slots declared up front (A, B, C, D), each checked
every ``CHECK_INTERVAL``; a slot whose instance is not running fails its
check and gets no traffic. Everything listens on loopback.

Used by tests/test_rolling_update.py (tether must lose nothing) and
benchmarks/bench_rolling.py (tether and uvicorn side by side).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: HAProxy checks every instance this often; two failed checks take it out.
CHECK_INTERVAL = 0.2
FALL = 2
#: An app that answers 200 to everything, /readyz included (for servers without tether's).
HELLO = Path(__file__).parent.parent / "benchmarks" / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> None:
    """haproxy and wrk from Debian, installed when missing (CI runs as root with apt)."""
    missing = [name for name in ("haproxy", "wrk") if shutil.which(name) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


@dataclass
class Server:
    """How to start one instance of the server under test on given ports."""

    name: str
    #: argv with {port} and {debug_port} placeholders
    argv: list[str]
    #: the port HAProxy checks, and the path: "debug" (tether's /readyz) or "app"
    check_on: str = "debug"

    def command(self, port: int, debug_port: int) -> list[str]:
        return [a.format(port=port, debug_port=debug_port) for a in self.argv]


def tether_server(*extra: str, drain_delay: float = 1.0) -> Server:
    """tether with a drain delay well above HAProxy's detection time."""
    return Server(
        "tether " + " ".join(extra),
        [
            sys.executable,
            "-m",
            "tether",
            "run",
            "hello:app",
            "--bind",
            "127.0.0.1:{port}",
            "--debug-bind",
            "127.0.0.1:{debug_port}",
            "--drain-delay",
            str(drain_delay),
            "--graceful-timeout",
            "20",
            *extra,
        ],
    )


def uvicorn_server() -> Server:
    """uvicorn as a Kubernetes user runs it: no readiness of its own, the app answers /readyz."""
    argv = [sys.executable, "-m", "uvicorn", "hello:app", "--port", "{port}", "--no-access-log"]
    return Server("uvicorn", [*argv, "--host", "127.0.0.1"], check_on="app")


@dataclass
class Instance:
    """One running instance: its process and its ports."""

    label: str
    port: int
    debug_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    terminated_at: float = 0.0
    exit_code: int | None = None
    stop_seconds: float = 0.0

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, as the kubelet sends it; wait for the exit and return its code."""
        self.terminated_at = time.monotonic()
        self.proc.terminate()
        self.exit_code = self.proc.wait(timeout)
        self.stop_seconds = time.monotonic() - self.terminated_at
        return self.exit_code


@dataclass
class Outcome:
    """What wrk saw, and how every stopped instance ended."""

    server: str
    requests: int = 0
    seconds: float = 0.0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    stop_seconds: dict[str, float] = field(default_factory=dict)
    wrk_output: str = ""

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Rollout:
    """HAProxy with four slots, and the instances started into them."""

    def __init__(self, server: Server, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.front = free_port()
        self.slots = {label: (free_port(), free_port()) for label in "ABCD"}
        self.stats = str(workdir / "haproxy.sock")
        self.instances: dict[str, Instance] = {}
        self.haproxy: subprocess.Popen[bytes] | None = None

    # -- HAProxy --------------------------------------------------------------

    def haproxy_config(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.stats} mode 600 level admin",
            "    nbthread 1",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    retries 0",  # like kube-proxy: a failed request is not retried elsewhere
            "frontend front",
            f"    bind 127.0.0.1:{self.front}",
            "    default_backend instances",
            "backend instances",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            f"    default-server inter {int(CHECK_INTERVAL * 1000)}ms fall {FALL} rise 1",
        ]
        for label, (port, debug_port) in self.slots.items():
            check = f"port {debug_port}" if self.server.check_on == "debug" else ""
            lines.append(f"    server {label} 127.0.0.1:{port} check {check}".rstrip())
        return "\n".join(lines) + "\n"

    def start_haproxy(self) -> None:
        config = self.workdir / "haproxy.cfg"
        config.write_text(self.haproxy_config())
        with open(self.workdir / "haproxy.log", "wb") as log:
            self.haproxy = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
            )

    def server_states(self) -> dict[str, str]:
        """Each slot's state as HAProxy sees it: UP, DOWN, ... ({} until HAProxy answers)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(self.stats)
                s.sendall(b"show stat\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "instances" and row.get("svname") in self.slots:
                states[row["svname"]] = row["status"].split()[0]
        return states

    def wait_state(self, label: str, state: str, within: float = 30.0) -> None:
        """Wait until HAProxy's checks show ``label`` in ``state``."""
        deadline = time.monotonic() + within
        while self.server_states().get(label) != state:
            instance = self.instances.get(label)
            if instance is not None and instance.proc.poll() is not None:
                raise AssertionError(f"{label} exited with {instance.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy never saw {label} {state}: {self.server_states()}")
            time.sleep(0.02)  # HAProxy's view, observed through its stats socket

    # -- instances ------------------------------------------------------------

    def start(self, label: str) -> Instance:
        """Start an instance in slot ``label``; return once HAProxy routes to it."""
        port, debug_port = self.slots[label]
        log = self.workdir / f"{label}.log"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                self.server.command(port, debug_port),
                cwd=HELLO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        instance = self.instances[label] = Instance(label, port, debug_port, proc, log)
        self.wait_state(label, "UP")
        return instance

    def close(self) -> None:
        for instance in self.instances.values():
            if instance.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.proc.pid, 9)
                instance.proc.wait(10)
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.kill()
            self.haproxy.wait(10)


def parse_wrk(out: str, outcome: Outcome) -> None:
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if m:
        outcome.requests = int(m[1])
        outcome.seconds = float(m[2]) / (1000 if m[3] == "ms" else 1)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        kinds = ("connect", "read", "write", "timeout")
        outcome.socket_errors = dict(zip(kinds, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    outcome.non_2xx = int(m[1]) if m else 0


@contextlib.contextmanager
def load(port: int, connections: int, threads: int = 1) -> Iterator[list[str]]:
    """wrk keep-alive load on ``port`` for as long as the block runs; its report, after."""
    report: list[str] = []
    wrk = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", "-d3600s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield report
    finally:
        wrk.send_signal(2)  # wrk stops and prints its report on SIGINT
        out, _ = wrk.communicate(timeout=30)
        report.append(out)


def rolling_update(server: Server, *, connections: int = 32, settle: float = 0.5) -> Outcome:
    """Play the rolling update for ``server``; ``settle`` seconds of load between the steps."""
    outcome = Outcome(server.name)
    with tempfile.TemporaryDirectory(prefix="tether-rolling-") as tmp:
        rollout = Rollout(server, Path(tmp))
        try:
            rollout.start_haproxy()
            rollout.start("A")
            rollout.start("B")
            with load(rollout.front, connections) as report:
                time.sleep(settle)  # steady load before the update begins (a benchmark window)
                for old, new in (("A", "C"), ("B", "D")):
                    rollout.start(new)
                    time.sleep(settle)
                    rollout.instances[old].stop()
                time.sleep(settle)
            outcome.wrk_output = report[0]
            parse_wrk(report[0], outcome)
            for label in ("A", "B"):
                instance = rollout.instances[label]
                outcome.exit_codes[label] = instance.exit_code
                outcome.stop_seconds[label] = instance.stop_seconds
            for label in ("C", "D"):
                outcome.exit_codes[label] = rollout.instances[label].stop()
        finally:
            rollout.close()
    return outcome


__all__ = ["Outcome", "Server", "ensure_tools", "rolling_update", "tether_server", "uvicorn_server"]


def main(argv: Sequence[str]) -> None:  # pragma: no cover - a manual check
    for server in (tether_server(*argv), uvicorn_server()):
        print(rolling_update(server))
