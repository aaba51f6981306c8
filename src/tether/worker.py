"""The process contract, in one place: what a master tells a worker, what a worker reports.

A master starts each worker as ``tether run APP --workers 0`` with its
sockets by ``LISTEN_FDS`` (:mod:`tether.sockets`, systemd's protocol) and one
:class:`WorkerContract` in its environment (env in):

- ``TETHER_NOTIFY_SOCKET``: where the worker reports ``READY=1``,
  ``WATCHDOG=1`` and ``STATUS=``. A tether-private name, removed from the
  environment *before* the app is imported: app code written for systemd
  (``sd_notify("READY=1")`` at import) sees no ``NOTIFY_SOCKET`` and cannot
  promote a generation whose startup has not run yet;
- ``TETHER_PARENT_FD``: the read end of a pipe only the master writes to;
  end-of-file means the master is gone and the worker stops. Its presence is
  what makes a process a master's worker (:func:`started_by_master`);
- ``TETHER_PARENT_PID``, ``TETHER_WORKER_ID``, ``TETHER_GENERATION``: for logs
  (the id is also the ``worker`` label of its per-process metrics); they stay
  in the environment, where the app may read them;
- ``TETHER_METRICS_FINAL``: the file where it writes its final counts when it
  exits, so the master's ``/metrics`` keeps them;
- ``TETHER_STOP_PLAN``: the file where the master writes its stop's deadline
  before its TERM. A signal carries no data, and the same TERM means "drain
  with the whole budget" in a reload and "drain by the master's deadline" in a
  final stop, whose drain delay has already used part of the budget. The
  deadline is a ``time.monotonic()`` value: that clock is one clock for every
  process on the host (see :class:`tether.config.ShutdownPlan`), so the worker
  ends when the master's plan says, not ``--graceful-timeout`` after the TERM.
  No file (a reload, an older master): the plan begins at the TERM;
- ``WATCHDOG_USEC`` (systemd's name, :func:`tether.notify.watchdog_interval`):
  heartbeats go at half of it, from the event loop.

What it sends back (env out, over the notify socket, :class:`WorkerReport`):
``READY=1`` once it serves; ``STATUS=failed: <one line>``
(:func:`failed_report`) when it fails (to start or later), so the master can
say why a reload failed without copying the worker's output;
``TETHER_RECYCLE=1`` (:func:`recycle_report`) when it is due for recycling:
it has stopped taking requests, and drains when the master sends TERM once
its successor is READY, or takes requests again on :data:`RESUME_SIGNAL` when
no successor could be started.
Its private debug socket (``--debug-bind unix:PATH``) answers the master's scrapes of
``/metrics`` and ``/debug/?format=json``.

A process that hands its sockets to a successor tells it who it replaces and
where to say ``READY=1``, here too: a master to the new master of an upgrade
(:class:`UpgradeContract`: ``TETHER_UPGRADE_FROM``, ``NOTIFY_SOCKET``,
``TETHER_SYSTEMD_NOTIFY_SOCKET``), a ``--workers 0`` process to its copy
(:func:`handoff_env`: ``TETHER_HANDOFF_NOTIFY``).

Invariant: no other module names these variables or fields. The master builds
the environment with :meth:`WorkerContract.to_env`, the worker reads it once
with :meth:`WorkerContract.from_env` and removes the private part with
:func:`withdraw` before the app is imported; ``tests/test_worker.py`` checks
the rest of the source for the names. The mapping is a parameter everywhere,
the seam a test replaces with a plain dict.

Error handling: a worker whose contract is incomplete or malformed (a variable
missing, a fd that is not a number) raises :class:`~tether.errors.ConfigError`
naming the variable, before anything is bound.

A worker's stderr is the master's stderr, inherited: a stalled master never
blocks a worker that logs, and a dead master does not swallow its workers'
last words.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.errors import ConfigError, leaves

if TYPE_CHECKING:
    from tether.config import RunConfig

__all__ = [
    "RESUME_SIGNAL",
    "WORKER_PROGRAM",
    "UpgradeContract",
    "WorkerContract",
    "WorkerReport",
    "failed_report",
    "failure_cause",
    "failure_line",
    "final_path",
    "handoff_env",
    "is_successor",
    "keeps_pid",
    "read_stop_plan",
    "recycle_report",
    "started_by_master",
    "take_handoff",
    "withdraw",
    "worker_argv",
    "worker_base_env",
    "write_stop_plan",
]

#: Where a worker started by a master sends its notifications (removed before the app imports).
NOTIFY_ENV = "TETHER_NOTIFY_SOCKET"
#: The fd of the pipe whose end-of-file means the master is gone.
PARENT_FD_ENV = "TETHER_PARENT_FD"
PARENT_PID_ENV = "TETHER_PARENT_PID"
WORKER_ID_ENV = "TETHER_WORKER_ID"
GENERATION_ENV = "TETHER_GENERATION"
#: Where a worker writes its final counts when it exits (:func:`tether.metrics.write_final`).
FINAL_ENV = "TETHER_METRICS_FINAL"
#: The file where the master writes a final stop's deadline before it sends TERM.
STOP_PLAN_ENV = "TETHER_STOP_PLAN"
#: A new master's predecessor (USR2): :class:`UpgradeContract`.
UPGRADE_FROM_ENV = "TETHER_UPGRADE_FROM"
#: systemd's notify socket, passed to a new master under a name of its own.
SYSTEMD_NOTIFY_ENV = "TETHER_SYSTEMD_NOTIFY_SOCKET"
#: Where a ``--workers 0`` process's copy reports READY (tether._handoff).
HANDOFF_ENV = "TETHER_HANDOFF_NOTIFY"
#: How a worker's last STATUS begins when it fails (to start, or while serving).
FAILED_STATUS = "failed: "
#: The notification field a worker sets when it is due for recycling (--max-requests,
#: --max-worker-memory): it has stopped taking requests and waits for its successor.
RECYCLE_FIELD = "TETHER_RECYCLE"
#: What the master sends a worker that stopped taking requests to be recycled when no
#: successor can take over (it failed to start): take connections again. CONTinue.
RESUME_SIGNAL = signal.SIGCONT
#: How a worker is started; the rest of the command line is ``worker_argv``.
WORKER_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "tether")

#: What a worker removes from its environment before the app is imported: the
#: app must not report in the worker's name, nor find the master's pipe and files.
_WITHDRAWN = (NOTIFY_ENV, "NOTIFY_SOCKET", PARENT_FD_ENV, STOP_PLAN_ENV, FINAL_ENV)

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
    PARENT_PID_ENV,
    UPGRADE_FROM_ENV,
    SYSTEMD_NOTIFY_ENV,
    WORKER_ID_ENV,
    GENERATION_ENV,
    STOP_PLAN_ENV,
)


@dataclass(frozen=True)
class WorkerContract:
    """What a master tells one worker: its place, and where to report.

    ``final_metrics`` and ``stop_plan`` may be None: a master of an older
    version (a reload runs the code on disk) may not name them, and a worker
    then keeps its counts to itself and begins its stop at the TERM.
    """

    #: ``TETHER_NOTIFY_SOCKET``: the master's notify receiver.
    notify_address: str
    #: ``TETHER_PARENT_FD``: the read end of the master's pipe, in the worker.
    parent_fd: int
    #: ``TETHER_PARENT_PID``: the master's pid.
    parent_pid: int
    #: ``TETHER_WORKER_ID``: the worker's id (its metrics' ``worker`` label).
    worker_id: int
    #: ``TETHER_GENERATION``: the generation it belongs to.
    generation: int
    #: ``TETHER_METRICS_FINAL``: where it leaves its final counts.
    final_metrics: str | None = None
    #: ``TETHER_STOP_PLAN``: where the master writes a stop's deadline.
    stop_plan: str | None = None

    def to_env(self) -> dict[str, str]:
        """The variables that carry this contract (added to the worker's base environment)."""
        env = {
            NOTIFY_ENV: self.notify_address,
            PARENT_FD_ENV: str(self.parent_fd),
            PARENT_PID_ENV: str(self.parent_pid),
            WORKER_ID_ENV: str(self.worker_id),
            GENERATION_ENV: str(self.generation),
        }
        if self.final_metrics is not None:
            env[FINAL_ENV] = self.final_metrics
        if self.stop_plan is not None:
            env[STOP_PLAN_ENV] = self.stop_plan
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerContract | None:
        """The contract in ``environ``; None when this process is not a master's worker.

        Raises :class:`~tether.errors.ConfigError` naming the variable when one
        is missing or malformed: a half-told worker must not start serving.
        """
        if not started_by_master(environ):
            return None
        return cls(
            notify_address=_required(environ, NOTIFY_ENV),
            parent_fd=_number(environ, PARENT_FD_ENV),
            parent_pid=_number(environ, PARENT_PID_ENV),
            worker_id=_number(environ, WORKER_ID_ENV),
            generation=_number(environ, GENERATION_ENV),
            final_metrics=environ.get(FINAL_ENV) or None,
            stop_plan=environ.get(STOP_PLAN_ENV) or None,
        )


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if not value:
        msg = (
            f"${name} is not set, but ${PARENT_FD_ENV} says a tether master started this "
            f"process; a master sets both: unset ${PARENT_FD_ENV} to run on its own"
        )
        raise ConfigError(msg)
    return value


def _number(environ: Mapping[str, str], name: str) -> int:
    text = _required(environ, name)
    if not text.isdigit():
        msg = (
            f"${name}={text!r} is not a number; it is set by a tether master for its "
            f"workers: unset ${PARENT_FD_ENV} to run on its own"
        )
        raise ConfigError(msg)
    return int(text)


def started_by_master(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` is a master's worker's (before :func:`withdraw` runs)."""
    return bool(environ.get(PARENT_FD_ENV))


def keeps_pid(environ: Mapping[str, str]) -> bool:
    """Whether this pid must outlive handovers (tether._init): nobody follows MAINPID=.

    PID 1 always keeps its pid; a master's worker never hands over.
    """
    if os.getpid() == 1:
        return True
    return not environ.get("NOTIFY_SOCKET") and not started_by_master(environ)


def withdraw(environ: MutableMapping[str, str]) -> None:
    """Remove what the app must not see before it is imported (the notify addresses, the pipe).

    The worker's id, generation and master's pid stay: they are for the app's logs too.
    """
    for name in _WITHDRAWN:
        environ.pop(name, None)


# -- what a worker reports -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReport:
    """One notification from a worker, read by the master."""

    #: ``READY=1``: it serves.
    ready: bool = False
    #: ``WATCHDOG=1``: a heartbeat from its event loop.
    heartbeat: bool = False
    #: ``TETHER_RECYCLE=1``: it stopped taking requests and asks for a successor.
    recycle: bool = False
    #: ``STATUS=``: its state in one line, None when the notification has none.
    status: str | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> WorkerReport:
        """The report in one notification's ``KEY=VALUE`` fields."""
        return cls(
            ready=fields.get("READY") == "1",
            heartbeat=fields.get("WATCHDOG") == "1",
            recycle=fields.get(RECYCLE_FIELD) == "1",
            status=fields.get("STATUS"),
        )


def failed_report(exc: BaseException) -> tuple[str, ...]:
    """The notification a worker sends when it fails: why, in one line."""
    return (f"STATUS={FAILED_STATUS}{failure_line(exc)}",)


def recycle_report(why: str) -> tuple[str, ...]:
    """The notification a worker sends when it is due for recycling (it stopped accepting)."""
    return (f"{RECYCLE_FIELD}=1", f"STATUS=recycling: {why}")


def failure_cause(status: str) -> str | None:
    """The reason in a ``STATUS`` a worker sent when it failed; None for any other status."""
    return status.removeprefix(FAILED_STATUS) if status.startswith(FAILED_STATUS) else None


# -- a successor: the process that takes over this one's sockets --------------------


@dataclass(frozen=True)
class UpgradeContract:
    """What a master tells the new master it starts with every socket (USR2, tether.master.upgrade).

    The new master reports ``READY=1`` (and its ``MAINPID``) to the old one's
    receiver, in ``NOTIFY_SOCKET``, and takes systemd's address over from
    ``TETHER_SYSTEMD_NOTIFY_SOCKET`` once it has.
    """

    #: ``TETHER_UPGRADE_FROM``: the old master's pid.
    predecessor_pid: int
    #: ``NOTIFY_SOCKET``: the old master's notify receiver.
    notify_address: str
    #: ``TETHER_SYSTEMD_NOTIFY_SOCKET``: systemd's notify socket, if the old master had one.
    systemd_address: str | None = None

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The new master's whole environment: ``base`` (the old one's) with this contract."""
        env = {k: v for k, v in base.items() if k not in ("WATCHDOG_PID", SYSTEMD_NOTIFY_ENV)}
        env[UPGRADE_FROM_ENV] = str(self.predecessor_pid)
        env["NOTIFY_SOCKET"] = self.notify_address
        if self.systemd_address:
            env[SYSTEMD_NOTIFY_ENV] = self.systemd_address
        return env

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> UpgradeContract | None:
        """The contract in ``environ``, removed from it; None (nothing removed): not an upgrade.

        Raises :class:`~tether.errors.ConfigError` naming the variable when one
        is malformed or missing.
        """
        if not environ.get(UPGRADE_FROM_ENV):
            return None
        pid_text = environ.pop(UPGRADE_FROM_ENV)
        if not pid_text.isdigit():
            msg = (
                f"${UPGRADE_FROM_ENV}={pid_text!r} is not a pid; it is set by a tether master "
                f"for the master that replaces it: unset it to start on its own"
            )
            raise ConfigError(msg)
        notify = environ.pop("NOTIFY_SOCKET", "")
        systemd = environ.pop(SYSTEMD_NOTIFY_ENV, "") or None
        if not notify:
            msg = (
                f"$NOTIFY_SOCKET is not set, but ${UPGRADE_FROM_ENV} says a tether master "
                f"started this one to replace it; unset ${UPGRADE_FROM_ENV} to start on its own"
            )
            raise ConfigError(msg)
        return cls(int(pid_text), notify, systemd)


def handoff_env(
    base: Mapping[str, str], *, notify_address: str, supervisor_address: str | None
) -> dict[str, str]:
    """The environment of a ``--workers 0`` process's copy (a reload, tether._handoff).

    ``base`` and where to report ``READY=1`` to its predecessor
    (``TETHER_HANDOFF_NOTIFY``); ``NOTIFY_SOCKET`` stays the supervisor's, so
    the copy announces itself there as the new ``MAINPID``.
    """
    env = {k: v for k, v in base.items() if k not in ("NOTIFY_SOCKET", HANDOFF_ENV)}
    env[HANDOFF_ENV] = notify_address
    if supervisor_address:
        env["NOTIFY_SOCKET"] = supervisor_address
    return env


def take_handoff(environ: MutableMapping[str, str]) -> str | None:
    """Remove the predecessor's address (a ``--workers 0`` copy) from ``environ``; it or None."""
    return environ.pop(HANDOFF_ENV, None)


def is_successor(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` is a successor's (an upgrade's new master, a reload's copy)."""
    return HANDOFF_ENV in environ or UPGRADE_FROM_ENV in environ


# -- how a worker is started -----------------------------------------------------------


def worker_argv(
    config: RunConfig, debug_path: str | None, program: Sequence[str] = WORKER_PROGRAM
) -> list[str]:
    """The command line of a worker: the single-process runtime on inherited sockets.

    No ``--bind``: the sockets arrive by LISTEN_FDS. No drain delay: the
    master holds readiness for the whole service and applies the delay itself.
    """
    return [*program, *config.to_argv(debug_path=debug_path)]


def worker_base_env(environ: Mapping[str, str], config: RunConfig) -> dict[str, str]:
    """The environment every worker starts from (its :class:`WorkerContract` is added at spawn)."""
    env = {k: v for k, v in environ.items() if k not in _PRIVATE_VARS}
    env["WATCHDOG_USEC"] = str(int(config.watchdog_timeout * 1_000_000))
    return env


def final_path(debug_path: str) -> str:
    """Where the worker whose private debug socket is ``debug_path`` leaves its final counts."""
    return debug_path + ".metrics"


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


def failure_line(exc: BaseException) -> str:
    """One line naming why a start failed (the first error; for the master's STATUS)."""
    first = next(iter(leaves(exc)), exc)
    text = str(first) or type(first).__name__
    if not type(first).__module__.startswith("tether"):
        text = f"{type(first).__name__}: {text}"
    line = text.strip().splitlines()[0] if text.strip() else type(first).__name__
    return line[:300]
