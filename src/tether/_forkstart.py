"""The first generation's workers, forked from the master's opening instead of started anew.

A worker started with ``exec`` is a fresh interpreter that imports tether's
command line again before it gets to the HTTP engine and the app: on a small
service that is most of the time from ``tether run`` to its first answer,
paid after the master paid the same imports. When the master opens
(:mod:`tether._opening`) it has no threads, no event loop, no HTTP engine and
no app yet, so a ``fork`` at that moment gives a child that is what an
exec'd worker would be once it had parsed its command line, minus the wait.
Worker 1 is usually not forked here but prestarted (tether._prestart, which
uses this module's steps once it has its job). Only the first generation is
forked; every later worker (a reload, a
replacement, ``--max-requests``) is exec'd, so a deploy loads new code.

The child is made to look like the exec'd worker it replaces: its own process
group; no Python signal handler of the master's, an empty signal mask; the
environment the worker contract gives (``LISTEN_PID`` is its own pid); the
logical working directory; the sockets on fds 3, 4, ... and the parent pipe's
read end after them. Every other fd that exec would have closed (the
master's own, all close-on-exec) is pointed at ``/dev/null`` rather than
closed: the master's Python objects for them live on in the child's memory,
and a number closed now could be reused by the worker and then closed under
it by one of those objects.

Invariant: the child never returns into the master's code: whatever happens,
it ends in ``os._exit`` with the worker's exit code (a traceback on stderr and
1 for anything but ``SystemExit``). Nothing here runs in the master but the
``fork`` itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from tether.sockets import LISTEN_FDS_START

__all__ = ["become_worker", "end_child", "fork_worker", "run_main"]


def fork_worker(
    main: Callable[[], object],
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    fds: Sequence[int],
    cwd: str,
) -> int:
    """Fork a worker that runs ``main()`` as the command ``tether ARGS`` here; its pid.

    ``main`` runs the worker's resolved config (tether._runner.run_worker);
    ``args`` is the command line an exec'd worker would have had, its
    ``sys.argv``. ``fds`` land on 3, 4, ... in the child; ``env`` is its whole
    environment, to which ``LISTEN_PID`` (the child's pid) is added. Raises
    OSError if the system refuses the process.
    """
    sys.stdout.flush()
    sys.stderr.flush()  # nothing the master buffered is written twice
    pid = os.fork()
    if pid:
        return pid

    def child() -> int:
        become_worker(env, fds, cwd)
        return run_main(main, args)

    end_child(child)


def end_child(body: Callable[[], int]) -> NoReturn:
    """Run a forked child's ``body`` and exit with its code: never back into the parent's code.

    Anything ``body`` raises is the child's last word: its traceback on stderr, exit 1.
    """
    code = 1
    try:
        code = body()
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def become_worker(env: Mapping[str, str], fds: Sequence[int], cwd: str) -> None:
    """Turn this forked child into what an exec'd worker would be (the module docstring)."""
    os.setpgid(0, 0)  # terminal signals go to the master, which decides
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(signum)):
                # What a fresh interpreter has: Python's own SIGINT, the default elsewhere.
                fresh = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, fresh)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _arrange_fds(fds)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["PWD"] = cwd


def _arrange_fds(fds: Sequence[int]) -> None:
    """``fds`` onto 3, 4, ...; every other fd above 2 onto /dev/null (see the docstring)."""
    top = LISTEN_FDS_START + len(fds)
    # Copies above every target first, so that no dup2 onto a target clobbers a source
    # still to be moved; they are this function's own numbers, closed once moved.
    floor = max([top, *fds]) + 1
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for target, fd in enumerate(copies, LISTEN_FDS_START):
        os.dup2(fd, target, inheritable=True)
    for fd in copies:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    kept = set(range(LISTEN_FDS_START, top)) | {null}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < LISTEN_FDS_START or fd in kept:
            continue
        with contextlib.suppress(OSError):  # the listing's own fd, closed by now
            if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:  # what exec would close
                os.dup2(null, fd, inheritable=False)


def run_main(main: Callable[[], object], args: Sequence[str]) -> int:
    """Run ``main()`` as the command ``tether ARGS``; the exit code it ends with."""
    sys.argv[1:] = args
    try:
        main()
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0
