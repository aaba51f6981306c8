"""What the side-by-side benchmarks share: the peers' environment, wrk, free ports.

Peers (uvicorn, gunicorn with uvicorn workers, granian) live in
benchmarks/.venv-peers, never in the project's environment; wrk comes from
Debian's packages. Both are installed on first use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PEERS = HERE / ".venv-peers"
TETHER = Path(sys.executable).parent / "tether"


#: What the peers' environment holds: the servers, and the frameworks the benchmark apps use.
#: uvicorn as its docs recommend installing it for production (uvloop, httptools, websockets,
#: watchfiles...): the same set tether's own environment has, so that `import uvicorn` loads
#: the same modules in both and a start-up comparison measures the servers, not the installs.
PEER_PACKAGES = (
    "uvicorn[standard]", "gunicorn", "granian", "hypercorn", "fastapi", "django",
)  # fmt: skip


def ensure_peers() -> Path:
    """The peers' bin directory, creating or completing the environment if needed."""
    marker = PEERS / "installed.txt"
    if not marker.exists() or marker.read_text().split() != list(PEER_PACKAGES):
        if not (PEERS / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        pip = [str(PEERS / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, *PEER_PACKAGES], check=True)
        marker.write_text(" ".join(PEER_PACKAGES))
    return PEERS / "bin"


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package if it is missing."""
    found = shutil.which("wrk")
    if not found:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and apt-get could not install it")
    return found


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    """Return once something accepts on ``port``; exit if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a benchmark harness polling a port it does not own
    raise SystemExit("server did not start listening")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` and every live process below it.

    A server's CPU is its whole tree's: `tether run` keeps its pid as a small
    keeper and serves from a child (with workers, from grandchildren).
    """
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [
                    int(c)
                    for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()
                ]
    return total / os.sysconf("SC_CLK_TCK")
