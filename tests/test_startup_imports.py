"""What a process imports before it serves: only what serving needs.

Start time and memory per worker are mostly imports. A serving process
(``--workers 0``, every worker) never loads the ctl client, the PID-1 init,
the reloader, ``prometheus_client`` (until ``/metrics`` is scraped) or a
websocket library (until a websocket arrives), nor the debug server when it
runs without one; a master starts its workers before it imports the HTTP
engine, the debug server, ``prometheus_client``, asyncio or the master's own
machinery (tether._opening binds and spawns first), and never imports the app.
Real processes, loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from waiting import eventually

from proc import APPS, free_port, get, tether

#: Never loaded by a process that serves without being scraped, reloaded, run as PID 1 or
#: sent a websocket, nor uvicorn's command line and reloaders (tether._uvicornpkg).
#: (ctypes: only a process that reaps orphans, a master or PID 1, needs it.)
NOT_FOR_SERVING = frozenset(
    {
        "ctypes",
        "prometheus_client",
        "tether.ctl",
        "tether._hooks",
        "tether._init",
        "tether._reloader",
        "tomllib",
        "uvicorn.main",
        "uvicorn.supervisors",
        "watchfiles",
        "websockets",
        # OpenTelemetry: only with OTEL_* variables set (tether._otel).
        "opentelemetry",
        "tether._otel",
    }
)
#: The debug server's own modules.
DEBUG_SERVER = frozenset({"tether.debug", "tether.console"})
#: Not loaded by a master before its first workers are started (the app: never). It does
#: load ctypes: it becomes its descendants' subreaper first. Nor asyncio and the master's
#: parts: the workers' start is the longest part of the master's, so it begins first.
NOT_BEFORE_SPAWN = (
    (NOT_FOR_SERVING - {"ctypes"})
    | DEBUG_SERVER
    | {
        "uvicorn",
        "watchfiles",
        "tether.serving",
        "asyncio",
        "tether.master",
        "tether.group",
        "tether.metrics",
        "tether._children",
        "tether._control",
    }
)

#: `tether run ARGS`, writing the master's modules to $MODULES_AT_SPAWN when it first spawns.
SPY = """\
import json, os, sys
import tether._forkstart
import tether.sockets

def spying(start):
    def spy(*args, **kwargs):
        out = os.environ["MODULES_AT_SPAWN"]
        if not os.path.exists(out):
            with open(out + ".tmp", "w") as f:
                json.dump(sorted(sys.modules), f)
            os.replace(out + ".tmp", out)
        return start(*args, **kwargs)
    return spy

# Every child's start (a fork of the opening, or an exec), before any module takes the name.
tether._forkstart.fork_worker = spying(tether._forkstart.fork_worker)
tether.sockets.spawn = spying(tether.sockets.spawn)
from tether.cli import main
main(sys.argv[1:])
"""


def loaded(port: int) -> set[str]:
    """The modules the serving process has imported (the modules app answers with them)."""
    status, body, _ = get(port)
    assert status == 200, body
    return set(json.loads(body))


def test_a_serving_process_imports_prometheus_client_only_when_scraped() -> None:
    """`--workers 0` serves with none of NOT_FOR_SERVING; the first /metrics scrape imports it."""
    with tether("modules:app") as t:
        t.ready()
        assert sorted(loaded(t.port) & NOT_FOR_SERVING) == []
        status, body, _ = get(t.debug_port, "/metrics")
        assert status == 200
        assert "tether_http_requests_total" in body
        assert "prometheus_client" in loaded(t.port)
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_without_the_debug_server_its_modules_are_never_imported() -> None:
    """`--no-debug`: neither the debug server nor the console is imported."""
    with tether("modules:app", debug=False) as t:
        t.ready()
        assert sorted(loaded(t.port) & (NOT_FOR_SERVING | DEBUG_SERVER)) == []


#: The command line's option declarations and sources: a worker is handed its resolved config.
COMMAND_LINE = frozenset({"click", "tether.cli", "tether._configsources", "tether._gunicorn"})


def test_a_prestarted_worker_never_imports_the_command_line() -> None:
    """`--workers 1`: the worker begun before the options were read serves without parsing them."""
    with tether("modules:app", "--workers", "1") as t:
        t.ready()
        assert sorted(loaded(t.port) & COMMAND_LINE) == []
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_the_master_spawns_its_workers_before_importing_the_http_engine(tmp_path: Path) -> None:
    """At its first spawn the master has imported none of NOT_BEFORE_SPAWN; then it serves."""
    out = tmp_path / "modules.json"
    port, debug_port = free_port(), free_port()
    argv = [sys.executable, "-c", SPY, "run", "modules:app", "--workers", "1"]
    argv += ["--bind", f"127.0.0.1:{port}", "--debug-bind", f"127.0.0.1:{debug_port}"]
    env = {**os.environ, "MODULES_AT_SPAWN": str(out)}
    proc = subprocess.Popen(argv, cwd=APPS, env=env, start_new_session=True)
    try:
        eventually(lambda: out.exists(), "the master started its first worker")
        # Nothing follows MAINPID= here, so the master is the child of the keeper that
        # kept the pid (tether._init): it has that module from the fork, not an import.
        at_spawn = set(json.loads(out.read_text())) - {"tether._init"}
        assert sorted(at_spawn & (NOT_BEFORE_SPAWN | {"modules"})) == []
        assert "tether._opening" in at_spawn
        # After the spawn the master serves its own debug listener, on the HTTP engine.
        eventually(lambda: _answers(debug_port, "/readyz"), "the master is ready")
        assert "modules" in loaded(port)  # the worker imported the app
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(port: int, path: str) -> bool:
    try:
        return get(port, path, timeout=1)[0] == 200
    except OSError:
        return False
