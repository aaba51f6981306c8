"""Reloads under load: tether vs uvicorn vs gunicorn (uvicorn workers) vs granian.

For each server, 2 workers of the same hello ASGI app:

1. steady: ``wrk -t1 -c64`` keep-alive load for ``--steady`` seconds → requests/s;
2. reloads: the same load while the server gets ``--reloads`` SIGHUPs, one
   after the other: each time, the old workers (the master's children before
   the signal) are watched through pidfds until all have exited, which gives
   the time from SIGHUP until the old generation is gone; then the next one;
3. broken deploy: a fresh server under load, the app replaced by one with a
   syntax error, SIGHUP, ``--broken-wait`` seconds of load; does it still serve?

Reported per server: failed requests (wrk's socket errors + non-2xx), the
throughput during the reloads as a fraction of the steady one, the median and
max seconds from SIGHUP until the old generation exited, and the broken-deploy
outcome. The peers live in ``benchmarks/.venv-peers`` (created here), never in
the project's dependencies; wrk comes from Debian (installed if missing).

    python benchmarks/bench_reload.py [--reloads 20] [--servers tether,uvicorn,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peers import PEERS, TETHER, ensure_peers, ensure_wrk, free_port

APP = """\
import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")) as f:
    VERSION = f.read().strip()
BODY = f"hello from {VERSION}\\n".encode()
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
"""


def ensure_tools() -> None:
    ensure_wrk()
    ensure_peers()


def server_argv(name: str, port: int) -> list[str]:
    peer = PEERS / "bin"
    quiet = ["--log-level", "warning"]
    commands = {
        "tether": [
            str(TETHER),
            "run",
            "app:app",
            "--workers",
            "2",
            "--no-debug",
            "--no-access-log",
            "--bind",
            f"127.0.0.1:{port}",
            *quiet,
        ],
        "uvicorn": [
            str(peer / "uvicorn"),
            "app:app",
            "--workers",
            "2",
            "--no-access-log",
            "--port",
            str(port),
            *quiet,
        ],
        "gunicorn": [
            str(peer / "gunicorn"),
            "app:app",
            "-w",
            "2",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "-b",
            f"127.0.0.1:{port}",
            *quiet,
        ],
        "granian": [
            str(peer / "granian"),
            "--interface",
            "asgi",
            "--workers",
            "2",
            "--port",
            str(port),
            *quiet,
            "app:app",
        ],
    }
    if name not in commands:
        raise SystemExit(f"unknown server {name}; choose from {', '.join(commands)}")
    return commands[name]


def children(pid: int) -> list[int]:
    """The workers below ``pid``: its children, not multiprocessing's helpers.

    A lone child that has children of its own is looked through: `tether run`
    keeps its pid as a keeper whose one child is the master (tether._init).
    """
    workers = _direct(pid)
    if len(workers) == 1 and (below := _direct(workers[0])):
        return below
    return workers


def _direct(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    workers = []
    for child in found:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            workers.append(child)
    return workers


def wait_gone(pids: list[int], limit: float) -> float | None:
    """Seconds until every pid exited (pidfds, no polling), or None if some outlived ``limit``."""
    began = time.monotonic()
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        alive = set(fds)
        while alive and (left := began + limit - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                alive.discard(fd)
                poller.unregister(fd)
        return None if alive else time.monotonic() - began
    finally:
        for fd in fds:
            os.close(fd)


def get(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return int(s.recv(64).split(b" ")[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_serving(port: int, proc: subprocess.Popen[bytes], workers: int = 2) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        if get(port) == 200 and len(children(proc.pid)) >= workers:
            time.sleep(1.0)  # let every worker finish starting, so steady is steady
            return
        time.sleep(0.1)
    raise SystemExit("server did not start serving")


@dataclass
class Wrk:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    non2xx: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return self.errors + self.non2xx


def parse_wrk(out: str) -> Wrk:
    result = Wrk()
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", out)
    if m:
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(3)]
        result.requests = int(m.group(1))
        result.seconds = float(m.group(2)) * scale
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result.errors = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result.non2xx = int(m.group(1))
    return result


def start_wrk(port: int, seconds: float) -> subprocess.Popen[str]:
    argv = ["wrk", "-t1", "-c64", f"-d{seconds:.0f}s", f"http://127.0.0.1:{port}/"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_wrk(proc: subprocess.Popen[str]) -> Wrk:
    proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
    out, _ = proc.communicate(timeout=30)
    return parse_wrk(out)


@dataclass
class Result:
    server: str
    steady_rps: float = 0.0
    reloads: int = 0
    reload_failed: int = 0
    reload_rps: float = 0.0
    old_gone_median: float | None = None
    old_gone_max: float | None = None
    reloads_not_done: int = 0
    broken_failed: int = 0
    broken_serving_after: bool = False
    notes: list[str] = field(default_factory=list)


class Server:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = open(directory / f"{name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            server_argv(name, self.port),
            cwd=directory,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_serving(self.port, self.proc)
        except BaseException:  # a server that never served is stopped, not left behind
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this script created
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()


def bench(name: str, args: argparse.Namespace, workdir: Path) -> Result:
    result = Result(name)
    directory = workdir / name
    directory.mkdir()
    (directory / "app.py").write_text(APP)
    (directory / "version.txt").write_text("v0\n")
    server = Server(name, directory)
    try:
        wrk = start_wrk(server.port, 600)
        time.sleep(args.steady)
        steady = stop_wrk(wrk)
        result.steady_rps = steady.rps

        wrk = start_wrk(server.port, 600)
        time.sleep(0.5)
        gone = []
        for n in range(1, args.reloads + 1):
            (directory / "version.txt").write_text(f"v{n}\n")
            old = children(server.proc.pid)
            server.proc.send_signal(signal.SIGHUP)
            took = wait_gone(old, 30)
            if took is None:
                result.reloads_not_done += 1
            else:
                gone.append(took)
            if server.proc.poll() is not None:
                result.notes.append(f"server exited during reload {n}")
                break
            # wait until the new generation is complete before the next signal
            deadline = time.monotonic() + 30
            while len(children(server.proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(args.pause)
        loaded = stop_wrk(wrk)
        result.reloads = n
        result.reload_failed = loaded.failed
        result.reload_rps = loaded.rps
        if gone:
            result.old_gone_median = round(statistics.median(gone), 3)
            result.old_gone_max = round(max(gone), 3)
    finally:
        server.stop()

    # The broken deploy, on a fresh server.
    (directory / "app.py").write_text(APP)
    (directory / "version.txt").write_text("v0\n")
    server = Server(name, directory)
    try:
        wrk = start_wrk(server.port, 600)
        time.sleep(1.0)
        (directory / "app.py").write_text("def broken(:\n")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(args.broken_wait)
        broken = stop_wrk(wrk)
        result.broken_failed = broken.failed
        result.broken_serving_after = get(server.port) == 200
        if server.proc.poll() is not None:
            result.notes.append(f"broken deploy: server exited with {server.proc.returncode}")
    finally:
        server.stop()
    return result


def report(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"wrk -t1 -c64 keep-alive, 2 workers, {args.reloads} SIGHUPs back to back "
        f"({args.pause}s apart after each new generation), {os.cpu_count()} CPUs",
        "",
        "| server | failed requests | reloads | throughput during reloads / steady |"
        " SIGHUP → old generation exited (median / max) | broken deploy: failed, still serving |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r.reload_rps / r.steady_rps if r.steady_rps else 0.0
        gone = (
            f"{r.old_gone_median:.2f}s / {r.old_gone_max:.2f}s"
            if r.old_gone_median is not None
            else "n/a"
        )
        if r.reloads_not_done:
            gone += f" ({r.reloads_not_done} never exited within 30s)"
        lines.append(
            f"| {r.server} | {r.reload_failed} | {r.reloads} | "
            f"{ratio:.2f} ({r.reload_rps:.0f} / {r.steady_rps:.0f} req/s) | {gone} | "
            f"{r.broken_failed}, {'yes' if r.broken_serving_after else 'NO (outage)'} |"
        )
    for r in results:
        for note in r.notes:
            lines.append(f"- {r.server}: {note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--steady", type=float, default=10.0)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--broken-wait", type=float, default=8.0)
    parser.add_argument("--servers", default="tether,uvicorn,gunicorn,granian")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    ensure_tools()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        for name in args.servers.split(","):
            print(f"--- {name}", file=sys.stderr, flush=True)
            results.append(bench(name, args, Path(tmp)))
            print(json.dumps(asdict(results[-1])), file=sys.stderr, flush=True)
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
