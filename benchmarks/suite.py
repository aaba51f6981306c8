"""`make bench`: tether against its peers on one machine, in one run, written to REPORT.md.

Servers: tether, uvicorn, gunicorn with uvicorn workers, granian and
hypercorn, each with 1 and 2 workers (tether in its default master mode).
Workloads: hello with keep-alive and with ``Connection: close``, a FastAPI
GET returning a 20-field pydantic model, a FastAPI POST of 2 KB of JSON, and
a Django view.

For every (workload, workers) the servers run in alternated rounds (A B C,
then C B A, ...) so that drift in the machine's load hits all alike. Each
round starts the server, warms it for one second, loads it with ``wrk -t1
-c64`` and records requests/s and CPU time per completed request: the CPU of
the server's whole process tree from /proc, which a shared machine disturbs
far less than throughput. The report gives medians with the min-max of the
rounds, and ratios against uvicorn with the same workers.

Then seconds from start to the first response and from SIGTERM to exit when
idle (alternated starts, 1 and 2 workers, and tether's one-process mode
against uvicorn's one process), the same stop while another process holds
~20k TCP sockets open; once per server with 2 workers, latency percentiles
under a light load (``wrk -c4``) and resident memory per worker when idle and
after 100k requests (and the master's own); last, ``bench_reload.py``: failed
requests and throughput through 5 back-to-back reloads under ``wrk -c64``.

    python benchmarks/suite.py [--rounds 3] [--duration 3] [--start-rounds 5]
                               [--reloads 5] [--quick]

Peers live in benchmarks/.venv-peers (created on first use), wrk comes from
Debian's packages, matplotlib from the project's ``bench`` extra. Only
loopback is loaded; every run is bounded by its duration.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peers import PEERS, TETHER, ensure_peers, ensure_wrk, free_port

HERE = Path(__file__).parent
APPS = HERE / "apps"
OUT = HERE / "out"
SERVERS = ("tether", "uvicorn", "gunicorn", "granian", "hypercorn")
#: name -> (module:app, path, wrk extra arguments)
WORKLOADS: dict[str, tuple[str, str, list[str]]] = {
    "hello keep-alive": ("hello:app", "/", []),
    "hello connection-close": ("hello:app", "/", ["-H", "Connection: close"]),
    "FastAPI GET": ("fastapi_model:app", "/item", []),
    "FastAPI POST 2KB": ("fastapi_model:app", "/echo", ["-s", str(OUT / "post_2kb.lua")]),
    "Django view": ("django_view:app", "/", []),
}


def server_argv(name: str, target: str, port: int, workers: int) -> list[str]:
    """How each server is started: same app, same port, no access log, quiet."""
    peer = PEERS / "bin"
    quiet = ["--log-level", "warning"]
    n = str(workers)
    where = f"127.0.0.1:{port}"
    return {
        "tether": [str(TETHER), "run", target, "--workers", n, "--no-debug", "--bind", where,
                   "--no-access-log", *quiet],
        # One process, no master: what `uvicorn app` (one worker) is to uvicorn.
        "tether --workers 0": [str(TETHER), "run", target, "--workers", "0", "--no-debug",
                               "--bind", where, "--no-access-log", *quiet],
        "uvicorn": [str(peer / "uvicorn"), target, "--workers", n, "--no-access-log",
                    "--host", "127.0.0.1", "--port", str(port), *quiet],
        "gunicorn": [str(peer / "gunicorn"), target, "-w", n, "-k",
                     "uvicorn.workers.UvicornWorker", "-b", where, *quiet],
        "granian": [str(peer / "granian"), "--interface", "asgi", "--workers", n,
                    "--host", "127.0.0.1", "--port", str(port), *quiet, target],
        "hypercorn": [str(peer / "hypercorn"), target, "-w", n, "-k", "uvloop", "-b", where,
                      *quiet],
        # Not a server: the least an HTTP/1.1 protocol in Python does (bench_conn.py --floor).
        "floor": [sys.executable, str(HERE / "floor_server.py"), target, str(port)],
    }[name]  # fmt: skip


# -- processes -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(p) for p in f.read().split()]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the given live processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def answers(port: int, path: str) -> bool:
    """Whether the server answers HTTP on ``port`` at all (POST-only paths answer 405)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class ServerFailed(Exception):
    """A server exited or did not answer within a minute."""


@dataclass
class Server:
    name: str
    target: str
    path: str
    workers: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    first_response: float = 0.0

    def start(self) -> Server:
        """Start and wait for the first response; one retry on a fresh port, saying why."""
        try:
            return self._start()
        except ServerFailed as failed:
            print(f"{failed}; trying once more on another port", flush=True)
            self.port = free_port()
            return self._start()

    def _start(self) -> Server:
        argv = server_argv(self.name, self.target, self.port, self.workers)
        log = OUT / "server.log"  # the last server's output, for when it does not serve
        self.started = time.monotonic()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=APPS, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = self.started + 60
        while not answers(self.port, self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise ServerFailed(f"{self.name} did not serve {self.target}: {' / '.join(tail)}")
            time.sleep(0.01)  # a harness polling a port it does not own
        self.first_response = time.monotonic() - self.started
        # Every worker must be up before a round starts (the first answer may come from one).
        while len(self.workers_pids()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def workers_pids(self) -> list[int]:
        assert self.proc is not None
        tree = descendants(self.proc.pid)
        # Workers are the Python processes below the main one (not multiprocessing's
        # resource tracker); a server with none serves from its main process.
        return [p for p in tree[1:] if _is_worker(p)] or tree[:1]

    def stop(self) -> float:
        """SIGTERM; seconds until the whole tree has exited."""
        assert self.proc is not None
        begun = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group
        return time.monotonic() - begun


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline.split(b"\0")[0] and b"resource_tracker" not in cmdline


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- load --------------------------------------------------------------------------


def wrk(
    url: str, seconds: float, connections: int = 64, extra: list[str] | None = None
) -> dict[str, float]:
    """One wrk run: requests/s, total requests, errors, latency percentiles in ms."""
    script = Path(tempfile.gettempdir()) / "tether-bench-report.lua"
    script.write_text(REPORT_LUA)
    args = [ensure_wrk(), "-t1", f"-c{connections}", f"-d{round(seconds)}s", *(extra or [])]
    if "-s" not in args:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("REPORT "))
    result: dict[str, float] = json.loads(line[len("REPORT ") :])
    return result


#: wrk's done() hook, shared by the POST script: one JSON line with what the report needs.
REPORT_LUA = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'REPORT {"requests": %d, "seconds": %f, "errors": %d, "p50": %f, "p99": %f}\\n',
    summary.requests, summary.duration / 1e6, errors,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass
class Round:
    rps: float
    cpu_us: float
    errors: int


def one_round(name: str, workload: str, workers: int, seconds: float) -> Round:
    target, path, extra = WORKLOADS[workload]
    with running(Server(name, target, path, workers)) as server:
        url = f"http://127.0.0.1:{server.port}{path}"
        wrk(url, 1, extra=extra)  # warm-up
        tree = [p for p in descendants(server.proc.pid)] if server.proc else []
        before = cpu_seconds(tree)
        result = wrk(url, seconds, extra=extra)
        used = cpu_seconds(tree) - before
    return Round(
        result["requests"] / result["seconds"],
        used / max(1.0, result["requests"]) * 1e6,
        int(result["errors"]),
    )


# -- the report ---------------------------------------------------------------------


def med(values: list[float], digits: int = 0) -> str:
    """The median and the min-max of ``values``: "12 (10-15)"."""
    d = digits
    return f"{statistics.median(values):.{d}f} ({min(values):.{d}f}-{max(values):.{d}f})"


def throughput_table(results: dict[tuple[str, int], dict[str, list[Round]]]) -> list[str]:
    lines = [
        "| workload | workers | server | requests/s median (min-max) | CPU µs/request median "
        "(min-max) | CPU/request vs uvicorn | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for (workload, workers), by_server in results.items():
        base = statistics.median(r.cpu_us for r in by_server["uvicorn"])
        for name, rounds in by_server.items():
            cpu = [r.cpu_us for r in rounds]
            lines.append(
                f"| {workload} | {workers} | {name} | {med([r.rps for r in rounds])} | "
                f"{med(cpu)} | {statistics.median(cpu) / base:.2f}x | "
                f"{sum(r.errors for r in rounds)} |"
            )
    return lines


def plot(results: dict[tuple[str, int], dict[str, list[Round]]], path: Path) -> bool:
    """CPU per request and requests/s by workload and server, one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no plot", flush=True)
        return False
    keys = list(results)
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), constrained_layout=True)
    width = 0.8 / len(SERVERS)
    for i, name in enumerate(SERVERS):
        xs = [k + i * width for k in range(len(keys))]
        cpu = [statistics.median(r.cpu_us for r in results[k][name]) for k in keys]
        rps = [statistics.median(r.rps for r in results[k][name]) for k in keys]
        axes[0].bar(xs, cpu, width, label=name)
        axes[1].bar(xs, rps, width, label=name)
    labels = [f"{w}\n{n} worker{'s' if n > 1 else ''}" for w, n in keys]
    for ax, title in zip(axes, ("CPU µs per request (lower is better)", "requests/s"), strict=True):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="hello keep-alive only")
    parser.add_argument("--start-rounds", type=int, default=5, help="starts per server")
    parser.add_argument("--reloads", type=int, default=5, help="0 (or --quick): none")
    args = parser.parse_args()
    ensure_wrk()
    ensure_peers()
    # What installing a package does: no server is timed compiling its own modules (with
    # PYTHONDONTWRITEBYTECODE set, an editable install would recompile at every start).
    compileall.compile_dir(HERE.parent / "src", quiet=1)
    OUT.mkdir(exist_ok=True)
    (OUT / "post_2kb.lua").write_text(POST_LUA + REPORT_LUA)
    workloads = ["hello keep-alive"] if args.quick else list(WORKLOADS)
    rounds = args.rounds
    began = time.monotonic()
    results: dict[tuple[str, int], dict[str, list[Round]]] = {}
    for workload in workloads:
        for workers in (1, 2):
            by_server: dict[str, list[Round]] = {name: [] for name in SERVERS}
            for i in range(rounds):
                for name in SERVERS if i % 2 == 0 else tuple(reversed(SERVERS)):
                    r = one_round(name, workload, workers, args.duration)
                    by_server[name].append(r)
                    print(
                        f"{workload:24s} w{workers} {name:9s} {r.rps:8.0f} req/s "
                        f"{r.cpu_us:7.1f} us CPU/request {r.errors} errors",
                        flush=True,
                    )
            results[(workload, workers)] = by_server
    started = start_stop_figures(args.start_rounds)
    process = process_figures()
    reloaded = reload_figures(args.reloads) if args.reloads and not args.quick else []
    plotted = plot(results, HERE / "report-throughput.png")
    report = [
        "# Benchmarks: tether and its peers, one run",
        "",
        f"Machine: {os.cpu_count()} CPUs, shared; Python {sys.version.split()[0]}; "
        f"{rounds} alternated rounds of `wrk -t1 -c64 -d{args.duration:g}s` after a 1 s "
        f"warm-up; {time.monotonic() - began:.0f} s in all. Reproduce with `make bench`.",
        "",
        "CPU per request is the CPU time of the server's whole process tree divided by the "
        "requests it completed; it holds up on a shared machine far better than requests/s. "
        "The peers are installed as their users install them for production (uvicorn as "
        "`uvicorn[standard]`, the same packages tether's own environment holds).",
        "",
        *(["![throughput](report-throughput.png)", ""] if plotted else []),
        *throughput_table(results),
        "",
        "## Start and stop, hello",
        "",
        *started,
        "",
        "## Latency and memory, 2 workers, hello",
        "",
        "Latency: the median of three 3 s runs of `wrk -t1 -c4`. Idle RSS: each worker's, "
        "once none of them has changed for a second (every worker done starting).",
        "",
        *process,
        "",
        *(["## Reloads under load", "", *reloaded, ""] if reloaded else []),
    ]
    (HERE / "REPORT.md").write_text("\n".join(report))
    print("\n".join(report))


#: Start and stop are measured for each server with 1 and 2 workers, and for tether's
#: one-process mode (against uvicorn with one worker, which is one process too).
START_VARIANTS = [(name, n) for n in (1, 2) for name in SERVERS] + [("tether --workers 0", 1)]
#: TCP sockets another process holds open while idle stops are timed again: a busy host's
#: socket table must not slow a stop down (each connection is two sockets).
CROWD_CONNECTIONS = 9_900


def start_stop_figures(rounds: int) -> list[str]:
    """Seconds from start to the first response, and from SIGTERM to exit when idle."""
    starts: dict[tuple[str, int], list[float]] = {v: [] for v in START_VARIANTS}
    stops: dict[tuple[str, int], list[float]] = {v: [] for v in START_VARIANTS}
    for i in range(rounds):
        for name, workers in START_VARIANTS if i % 2 == 0 else reversed(START_VARIANTS):
            server = Server(name, "hello:app", "/", workers).start()
            starts[(name, workers)].append(server.first_response)
            time.sleep(0.5)  # idle, as a service waiting for a deploy's stop is
            stops[(name, workers)].append(server.stop())
    crowded: dict[tuple[str, int], list[float]] = {}
    with crowd(CROWD_CONNECTIONS) as held:
        for name, workers in (("tether", 2), ("tether --workers 0", 1), ("uvicorn", 2)):
            crowded[(name, workers)] = []
            for _ in range(rounds):
                server = Server(name, "hello:app", "/", workers).start()
                time.sleep(0.5)
                crowded[(name, workers)].append(server.stop())
    lines = [
        f"Median of {rounds} alternated starts (min-max); the stop is SIGTERM to the exit of "
        "the whole process tree, idle. The last column is the same stop while another process "
        f"holds {held:,} TCP sockets open (the host's socket table that a leak check could "
        "read).",
        "",
        "| server | workers | start to first response s | vs uvicorn | SIGTERM to exit idle s "
        f"| with {held:,} sockets on the host s |",
        "|---|---|---|---|---|---|",
    ]
    for name, workers in START_VARIANTS:
        base = statistics.median(starts[("uvicorn", workers)])
        start = starts[(name, workers)]
        busy = crowded.get((name, workers))
        mode = "1 (one process)" if name == "tether --workers 0" else str(workers)
        lines.append(
            f"| {name} | {mode} | {med(start, 3)} | {statistics.median(start) / base:.2f}x | "
            f"{med(stops[(name, workers)], 3)} | {med(busy, 3) if busy else '-'} |"
        )
    return lines


@contextlib.contextmanager
def crowd(connections: int) -> Iterator[int]:
    """Another process holding ``connections`` loopback TCP connections open; yields sockets."""
    holder = subprocess.Popen(
        [sys.executable, "-c", CROWD_HOLDER, str(connections)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    held = int(holder.stdout.readline() or 0)  # the holder says how many it holds, then waits
    try:
        yield held
    finally:
        holder.kill()
        holder.wait()


CROWD_HOLDER = """
import resource, socket, sys
want = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
want = min(want, (hard - 100) // 2)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
held = []
for _ in range(want):
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    held += [client, server]
print(len(held), flush=True)
import signal; signal.pause()
"""


def settled_rss(pids: list[int]) -> list[float]:
    """Each worker's RSS once none has changed for a second: all of them done starting.

    The first response can come from one worker while another is still importing;
    read at once, that one's RSS would be a half-started process's.
    """
    last = [rss_mib(p) for p in pids]
    steady = 0
    deadline = time.monotonic() + 30
    while steady < 5 and time.monotonic() < deadline:
        time.sleep(0.2)  # sampling a figure the server does not announce
        now = [rss_mib(p) for p in pids]
        steady = steady + 1 if now == last else 0
        last = now
    return last


def process_figures() -> list[str]:
    """Latency at a light load and memory, once per server with 2 workers."""
    rows = [
        "| server | p50 ms at 4 connections | p99 ms (min-max of 3 runs) | RSS per worker idle "
        "MiB | after 100k requests MiB | master MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in SERVERS:
        server = Server(name, "hello:app", "/", 2).start()
        try:
            url = f"http://127.0.0.1:{server.port}/"
            pids = server.workers_pids()
            idle = statistics.mean(settled_rss(pids))
            # Three runs, the median of each figure: one stall of the shared machine
            # should not stand for a server's latency.
            light = [wrk(url, 3, connections=4) for _ in range(3)]
            p50 = statistics.median(r["p50"] for r in light)
            p99s = [r["p99"] for r in light]
            total = 0.0
            while total < 100_000:  # bounded: each run is 2 s
                total += wrk(url, 2)["requests"]
            loaded = statistics.mean(rss_mib(p) for p in pids)
            assert server.proc is not None
            master = f"{rss_mib(server.proc.pid):.1f}" if server.proc.pid not in pids else "-"
        finally:
            server.stop()
        rows.append(
            f"| {name} | {p50:.2f} | {med(p99s, 2)} | {idle:.1f} | {loaded:.1f} | {master} |"
        )
        print(rows[-1], flush=True)
    return rows


def reload_figures(reloads: int) -> list[str]:
    """bench_reload.py's table: failed requests and throughput through back-to-back reloads."""
    out = subprocess.run(
        [sys.executable, str(HERE / "bench_reload.py"), "--reloads", str(reloads),
         "--broken-wait", "4"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (OUT / "reload.txt").write_text(out)
    return [line for line in out.splitlines() if line.startswith(("|", "wrk", "- "))]


POST_LUA = """
local fields = {}
for i = 1, 60 do
  fields[#fields + 1] = string.format('"field_%02d": "%s"', i, string.rep("x", 20))
end
wrk.method = "POST"
wrk.body = "{" .. table.concat(fields, ", ") .. "}"
wrk.headers["Content-Type"] = "application/json"
"""


if __name__ == "__main__":
    main()
