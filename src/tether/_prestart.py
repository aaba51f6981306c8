"""A master's first worker, begun before the master has read its command line.

A master's first worker is forked from the master's opening
(:mod:`tether._forkstart`), but the opening comes only after the master has
imported its command line (click, the options, the config sources: tens of
milliseconds) and bound its sockets; the worker then imports the event loop,
the HTTP engine and tether's runtime (as long again) before it can import the
app. The two stretches do not depend on each other, and a master's start to
its first answer is their sum. So when the command line visibly asks for a
master (``--workers N``, N >= 1, on the command line or in
``TETHER_WORKERS`` / ``WEB_CONCURRENCY``), the ``tether`` command forks once
more at its very start (:mod:`tether._entry`), before it imports click and
its options: the child imports what every worker imports and waits;
the parent goes on to parse, bind and open. At the first spawn the opening
sends the child the worker's resolved config, arguments, environment,
working directory and fds over a socket pair, and the child becomes that
worker with :mod:`tether._forkstart`'s steps; the two stretches overlap.
The config comes resolved (``RunConfig.for_worker``) so that the child
never imports the command line's option declarations nor parses them. The
job is a pickle: it crosses only the socket pair between this process and
its own fork, running the same code.

What the child imports is tether, its HTTP engine and their dependencies,
never the app or a library the app configures from its environment
(``prometheus_client`` reads ``PROMETHEUS_MULTIPROC_DIR`` when it is
imported, and the master sets that later).

Invariants: the child never runs the master's code and never returns from
:func:`start`: it ends in ``os._exit``. It waits in its own process group
(a Ctrl-C reaches the master, which decides), and it exits as soon as its
socket pair reads end-of-file: the master is gone, or has no use for it. A
child the master does not use is killed and reaped (:func:`discard`: at the
opening's end, on ``--workers 0``, at exit). The hint is only a hint: a
config file that sets ``workers`` gets no prestarted worker (the opening
forks as before), and one that sets ``workers = 0`` has it discarded.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether._forkstart import become_worker, end_child, run_main
from tether.sockets import LISTEN_FDS_START

if TYPE_CHECKING:
    from tether.config import RunConfig

__all__ = ["WORKERS_ENV", "WORKERS_FLAGS", "Prestarted", "discard", "start", "take", "wants_master"]

#: The header before the job: its length in bytes (the fds ride on it).
_HEADER = struct.Struct("!I")
#: More than any bind list needs; the job says how many it sent.
_MAX_FDS = 250

#: `tether run`'s flags for its worker count, long then short, and the variables it
#: reads it from, the fallback first. Written here, not imported: this runs before the
#: fork, and importing the command line's modules first makes both processes slower
#: (measured: +4 ms to the first answer). tests/test_prestart.py checks both against
#: tether.cli and tether._configsources.
WORKERS_FLAGS = ("--workers", "-w")
WORKERS_ENV = ("WEB_CONCURRENCY", "TETHER_WORKERS")

_started: Prestarted | None = None


def wants_master(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether ``tether ARGV`` visibly runs a master: ``run`` with workers >= 1 given.

    The environment's count counts unless the command line gives its own
    (the command line wins, as for every option).
    """
    if not argv or argv[0] != "run":
        return False
    workers: str | None = None
    for name in WORKERS_ENV:  # the later wins
        workers = environ.get(name, workers)
    long, short = WORKERS_FLAGS
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in WORKERS_FLAGS and i + 1 < len(args):
            workers = args[i + 1]
        elif arg.startswith(long + "="):
            workers = arg.partition("=")[2]
        elif arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            workers = arg[len(short) :]
    return workers is not None and workers.strip().isdigit() and int(workers) >= 1


class Prestarted:
    """The master's side of a prestarted worker: its pid and the socket it waits on."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def launch(
        self,
        config: RunConfig,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        fds: Sequence[int],
        cwd: str,
    ) -> int:
        """Make the waiting child the worker that runs ``config`` as ``tether ARGS``; its pid.

        As :func:`tether._forkstart.fork_worker`: ``fds`` land on 3, 4, ... and
        ``env`` is the whole environment. Raises OSError if the child is gone.
        """
        job = {"config": config, "args": list(args), "env": dict(env), "cwd": cwd, "fds": len(fds)}
        data = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
        try:
            socket.send_fds(self.sock, [_HEADER.pack(len(data))], list(fds))
            self.sock.sendall(data)
        finally:
            self.sock.close()
        return self.pid

    def kill(self) -> None:
        """Kill the child and reap it."""
        self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def take() -> Prestarted | None:
    """The prestarted worker for the first spawn, once; None if there is none."""
    global _started
    found, _started = _started, None
    return found


def discard() -> None:
    """Kill and reap the prestarted worker nobody took (nothing if there is none)."""
    found = take()
    if found is not None:
        found.kill()


def start(worker_main: Callable[[RunConfig], object]) -> None:
    """Fork the prestarted worker; in the child, never returns (see the module docstring).

    ``worker_main(config)`` is what the child runs once it has its job: the
    worker's resolved config (tether._runner.run_worker).
    """
    global _started
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        theirs.close()
        _started = Prestarted(pid, ours)
        atexit.register(discard)
        return

    def child() -> int:
        ours.close()
        os.setpgid(0, 0)
        _preload()
        job, fds = _receive(theirs)
        theirs.close()
        return 0 if job is None else _become(worker_main, job, fds)

    end_child(child)


def _preload() -> None:
    """What every worker imports before its app; a failure here is the worker's to report."""
    for name in ("tether._runner", "tether.runtime", "tether.serving", "uvloop"):
        with contextlib.suppress(Exception):
            __import__(name)


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The job the master sent and its fds; (None, []) at end-of-file (the master is gone)."""
    head, fds, _flags, _addr = socket.recv_fds(
        sock, _HEADER.size, _MAX_FDS, socket.MSG_CMSG_CLOEXEC
    )
    if not head:
        return None, []
    while len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            return None, []
        head += more
    (length,) = _HEADER.unpack(head)
    data = bytearray()
    while len(data) < length:
        more = sock.recv(min(length - len(data), 1 << 20))
        if not more:
            return None, []
        data += more
    job: dict[str, Any] = pickle.loads(data)
    if job["fds"] != len(fds):
        msg = f"the master sent {job['fds']} fds, {len(fds)} arrived"
        raise RuntimeError(msg)
    return job, fds


def _become(worker_main: Callable[[RunConfig], object], job: dict[str, Any], fds: list[int]) -> int:
    become_worker(job["env"], fds, job["cwd"])
    for fd in fds:  # those not moved onto their own number point at /dev/null by now
        if fd >= LISTEN_FDS_START + len(fds):
            with contextlib.suppress(OSError):
                os.close(fd)
    config = job["config"]
    return run_main(lambda: worker_main(config), job["args"])
