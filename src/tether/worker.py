"""The worker's side of the master contract: what a worker receives, what it sends back.

A master starts each worker as ``tether run APP --workers 0`` with its
sockets by ``LISTEN_FDS`` and these variables (env in):

- ``TETHER_NOTIFY_SOCKET``: where the worker reports ``READY=1``,
  ``WATCHDOG=1`` and ``STATUS=``. A tether-private name, removed from the
  environment *before* the app is imported: app code written for systemd
  (``sd_notify("READY=1")`` at import) sees no ``NOTIFY_SOCKET`` and cannot
  promote a generation whose startup has not run yet;
- ``TETHER_PARENT_FD``: the read end of a pipe only the master writes to;
  end-of-file means the master is gone and the worker stops;
- ``TETHER_PARENT_PID``, ``TETHER_WORKER_ID``, ``TETHER_GENERATION``: for logs
  (the id is also the ``worker`` label of its per-process metrics);
- ``WATCHDOG_USEC``: heartbeats go at half of it, from the event loop;
- ``TETHER_METRICS_FINAL`` (:data:`tether.metrics.FINAL_ENV`): the file where
  it writes its final counts when it exits, so the master's ``/metrics`` keeps
  them;
- ``TETHER_STOP_PLAN`` (:data:`STOP_PLAN_ENV`): the file where the master
  writes its stop's deadline before its TERM. A signal carries no data, and the
  same TERM means "drain with the whole budget" in a reload and "drain by the
  master's deadline" in a final stop, whose drain delay has already used part
  of the budget. The deadline is a ``time.monotonic()`` value: that clock is
  one clock for every process on the host (see
  :class:`tether.config.ShutdownPlan`), so the worker ends when the master's
  plan says, not ``--graceful-timeout`` after the TERM. No file (a reload, an
  older master): the plan begins at the TERM.

What it sends back (env out, over the notify socket): ``READY=1`` once it
serves; ``STATUS=failed: <one line>`` when it fails (to start or later), so
the master can say why a reload failed without copying the worker's output;
``TETHER_RECYCLE=1`` (:data:`RECYCLE_FIELD`) when it is due for recycling: it
has stopped taking requests, and drains when the master sends TERM once its
successor is READY, or takes requests again on :data:`RESUME_SIGNAL` when no
successor could be started.
Its private debug socket (``--debug-bind unix:PATH``) answers the master's scrapes of
``/metrics`` and ``/debug/?format=json``.

A worker's stderr is the master's stderr, inherited: a stalled master never
blocks a worker that logs, and a dead master does not swallow its workers'
last words.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence

from tether.config import RunConfig

__all__ = [
    "FAILED_STATUS",
    "NOTIFY_ENV",
    "PARENT_FD_ENV",
    "RECYCLE_FIELD",
    "RESUME_SIGNAL",
    "STOP_PLAN_ENV",
    "WORKER_PROGRAM",
    "failure_line",
    "read_stop_plan",
    "take_notify_address",
    "worker_argv",
    "worker_base_env",
    "write_stop_plan",
]

#: Where a worker started by a master sends its notifications (removed before the app imports).
NOTIFY_ENV = "TETHER_NOTIFY_SOCKET"
#: The fd of the pipe whose end-of-file means the master is gone.
PARENT_FD_ENV = "TETHER_PARENT_FD"
#: How a worker's last STATUS begins when it fails (to start, or while serving).
FAILED_STATUS = "failed: "
#: The notification field a worker sets when it is due for recycling (--max-requests,
#: --max-worker-memory): it has stopped taking requests and waits for its successor.
RECYCLE_FIELD = "TETHER_RECYCLE"
#: What the master sends a worker that stopped taking requests to be recycled when no
#: successor can take over (it failed to start): take connections again. CONTinue.
RESUME_SIGNAL = signal.SIGCONT
#: The file where the master writes a final stop's deadline before it sends TERM.
STOP_PLAN_ENV = "TETHER_STOP_PLAN"
#: How a worker is started; the rest of the command line is ``worker_argv``.
WORKER_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "tether")

#: Variables that describe *this* process's place in a tree of processes;
#: a child gets its own values (or none), never ours.
_PRIVATE_VARS = (
    "NOTIFY_SOCKET",
    NOTIFY_ENV,
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    PARENT_FD_ENV,
    "TETHER_PARENT_PID",
    "TETHER_UPGRADE_FROM",
    "TETHER_SYSTEMD_NOTIFY_SOCKET",
    "TETHER_WORKER_ID",
    "TETHER_GENERATION",
    STOP_PLAN_ENV,
)


def worker_argv(
    config: RunConfig, debug_path: str | None, program: Sequence[str] = WORKER_PROGRAM
) -> list[str]:
    """The command line of a worker: the single-process runtime on inherited sockets.

    No ``--bind``: the sockets arrive by LISTEN_FDS. No drain delay: the
    master holds readiness for the whole service and applies the delay itself.
    """
    return [*program, *config.to_argv(debug_path=debug_path)]


def worker_base_env(environ: Mapping[str, str], config: RunConfig) -> dict[str, str]:
    """The environment every worker starts from (per-worker values are added at spawn)."""
    env = {k: v for k, v in environ.items() if k not in _PRIVATE_VARS}
    env["WATCHDOG_USEC"] = str(int(config.watchdog_timeout * 1_000_000))
    return env


def take_notify_address() -> tuple[str | None, bool]:
    """Remove this process's notify address from the environment; (address, is_worker).

    A worker's address is the tether-private one; any other process reports
    to ``NOTIFY_SOCKET`` (systemd, or a ``--workers 0`` predecessor's
    supervisor). Either way the variable is gone before the app is imported.
    """
    private = os.environ.pop(NOTIFY_ENV, None)
    if private:
        os.environ.pop("NOTIFY_SOCKET", None)
        return private, True
    return os.environ.pop("NOTIFY_SOCKET", None) or None, False


def write_stop_plan(path: str, deadline: float) -> None:
    """Leave a stop's absolute deadline (``time.monotonic()``) where the workers read it.

    Written whole and renamed into place: a worker never reads half a number.
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"deadline={deadline!r}\n")
    os.replace(tmp, path)


def read_stop_plan(path: str | None) -> float | None:
    """The deadline the master wrote at ``path`` for this stop, or None (no file: a reload)."""
    if path is None:
        return None
    try:
        with open(path) as f:
            key, _, value = f.read().strip().partition("=")
        return float(value) if key == "deadline" else None
    except (OSError, ValueError):
        return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def failure_line(exc: BaseException) -> str:
    """One line naming why a start failed (the first error; for the master's STATUS)."""
    first = next(iter(_leaves(exc)), exc)
    text = str(first) or type(first).__name__
    if not type(first).__module__.startswith("tether"):
        text = f"{type(first).__name__}: {text}"
    line = text.strip().splitlines()[0] if text.strip() else type(first).__name__
    return line[:300]
