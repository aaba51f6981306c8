"""A master's opening: what it does before its event loop, so its first workers start at once.

The longest stretch of a master's start is its first workers' own: each is a
fresh interpreter that imports the HTTP engine and the app. Nothing the master
does for itself (its event loop, pool, control socket, debug listener,
metrics) has to come first; only what a worker inherits does: the listening
sockets, the notify socket it reports to, the pipe whose end-of-file tells it
the master is gone, and the private runtime directory for its debug socket.
:func:`open_master` does exactly that much, with the standard library and
tether's protocol modules (no asyncio, no HTTP engine), then spawns the first
generation's workers; the master (:mod:`tether.master`) takes the opening
over and adopts those processes as the pool asks for them, so the workers
import their app while the master imports the rest of itself.

The runtime directory lives in ``$XDG_RUNTIME_DIR`` when that is set
(systemd's ``RuntimeDirectory=``, a per-user tmpfs), else in ``$TMPDIR`` or
the system temporary directory, and is named ``tether-master-<pid>-*``: a
master killed with ``-9`` leaves it behind, and the next master to start there
removes every such directory whose owner is gone.

Invariants: importing this module loads no asyncio (tests/test_startup_imports.py);
a worker is spawned only once everything it inherits exists; the first workers
are spawned here only when nothing must run before a spawn (no gunicorn server
hooks, not an upgrade's new master); a worker the master never adopted is
killed and reaped by :meth:`Opening.close`.

Error handling: a directory that cannot hold the master's sockets (missing,
read-only, full, or so deep that a unix socket path would pass the kernel's
108-byte limit) is a :class:`~tether.errors.ConfigError`, naming the directory
and the fix; so is an address that cannot be bound (:class:`~tether.errors.BindError`).
Nothing is left open when :func:`open_master` raises.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tether import _prestart
from tether import sockets as sockets_mod
from tether._appmetrics import MultiprocDir
from tether._forkstart import fork_worker
from tether._listeners import open_listeners
from tether.config import RunConfig
from tether.errors import ConfigError
from tether.notify import NotifyReceiver, runtime_base
from tether.worker import (
    UpgradeContract,
    WorkerContract,
    final_path,
    worker_argv,
    worker_base_env,
)

__all__ = [
    "RUNDIR_PREFIX",
    "Opening",
    "logical_cwd",
    "make_rundir",
    "open_master",
    "remove_stale_rundirs",
    "rundir_failed",
    "spawn_worker",
]

log = logging.getLogger("tether.master")

RUNDIR_PREFIX = "tether-master-"
#: sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
#: The longest name the master puts in its directory (a worker's debug socket).
_LONGEST_NAME = "w99999999.sock"
#: A runtime directory without its notify socket yet is left alone this long (seconds).
_STARTING_GRACE = 60.0


@dataclass
class Opening:
    """What a master holds before its event loop runs; the master takes it over whole.

    Resource handling: owns every socket, the pipe, the notify receiver and the
    runtime directory until :meth:`take` (then the master closes them); the
    workers spawned here stay its own until adopted, and :meth:`close` kills
    and reaps any that were not.
    """

    app_socks: list[socket.socket]
    debug_sock: socket.socket | None
    control_sock: socket.socket | None
    #: The control socket's path when this master owns it (bound here, or inherited).
    control_path: str | None
    rundir: str
    rx: NotifyReceiver
    parent_r: int
    parent_w: int
    #: What every worker inherits; each gets its own WorkerContract on top.
    worker_env: dict[str, str]
    stop_plan_path: str
    cwd: str
    app_metrics: MultiprocDir
    systemd_address: str | None = None
    upgrade: UpgradeContract | None = None
    #: The first generation's workers spawned here, by worker id, until adopted.
    first_workers: dict[int, int] = field(default_factory=dict)
    _taken: bool = False

    def take(self) -> Opening:
        """The master owns every resource from now on (it closes them itself)."""
        self._taken = True
        return self

    def adopt(self, wid: int, generation: int) -> int | None:
        """The pid of worker ``wid`` of ``generation`` if it was spawned here (once)."""
        return self.first_workers.pop(wid, None) if generation == 1 else None

    def close(self) -> None:
        """Kill the workers nobody adopted; close the rest unless the master took it."""
        for pid in self.first_workers.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.first_workers.clear()
        if self._taken:
            return
        self._taken = True
        for fd in (self.parent_r, self.parent_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for sock in [*self.app_socks, self.debug_sock, self.control_sock]:
            if sock is not None:
                sock.close()
        self.rx.close()
        self.app_metrics.close(os.environ)
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self.control_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.control_path)


def open_master(
    config: RunConfig,
    *,
    program: Sequence[str] | None = None,
    forked: Callable[[RunConfig], object] | None = None,
    app_metrics: MultiprocDir | None = None,
) -> Opening:
    """Bind or inherit the sockets, make the runtime directory; spawn the first workers.

    ``program`` is how a worker is started (:data:`tether.worker.WORKER_PROGRAM`);
    None spawns nothing (the master spawns every worker itself). ``forked`` (a
    worker's run, given its resolved config: tether._runner.run_worker): the first
    workers are forks of this interpreter that call it (tether._forkstart), which
    saves each one an interpreter's start and the command line's imports and
    parse; later ones run ``program``.
    Raises ConfigError with nothing left open.
    """
    env = os.environ
    upgrade = UpgradeContract.take(env)  # a USR2: the old master started this one
    if upgrade is not None:
        systemd_address = upgrade.systemd_address
    else:
        systemd_address = env.pop("NOTIFY_SOCKET", None)
    listeners = open_listeners(config)  # inherited (an upgrade, systemd) or bound
    control_sock, control_path = listeners.control, None
    rundir = ""
    rx: NotifyReceiver | None = None
    try:
        if control_sock is None and config.control:
            from tether._control import bind_control  # the control server's module: asyncio

            control_sock = bind_control(config.control)
            control_path = config.control
        elif control_sock is not None:
            name = control_sock.getsockname()
            control_path = name if isinstance(name, str) and name else None
        rundir = make_rundir()
        try:
            rx = NotifyReceiver(os.path.join(rundir, "notify.sock"))
        except OSError as exc:
            raise rundir_failed(rundir, exc) from exc
        metrics = app_metrics if app_metrics is not None else MultiprocDir()
        if config.app_metrics:
            metrics.open(rundir, env)
    except BaseException:
        listeners.close()
        if control_sock is not None and control_sock is not listeners.control:
            control_sock.close()
            if control_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(control_path)
        if rx is not None:
            rx.close()
        if rundir:
            shutil.rmtree(rundir, ignore_errors=True)
        raise
    # Workers hold the read end; only this process holds the write end, so
    # its death (however it happens) is end-of-file for every worker.
    parent_r, parent_w = os.pipe()
    worker_env = worker_base_env(env, config)
    worker_env.update(metrics.worker_env())
    opening = Opening(
        app_socks=listeners.app,
        debug_sock=listeners.debug,
        control_sock=control_sock,
        control_path=control_path,
        rundir=rundir,
        rx=rx,
        parent_r=parent_r,
        parent_w=parent_w,
        worker_env=worker_env,
        stop_plan_path=os.path.join(rundir, "stop-plan"),
        cwd=logical_cwd(),
        app_metrics=metrics,
        systemd_address=systemd_address,
        upgrade=upgrade,
    )
    # A gunicorn config's hooks run before each spawn, and an upgrade's new master
    # waits for its predecessor's word: then the master spawns every worker itself.
    if program is not None and upgrade is None and config.python_config is None:
        try:
            for wid in range(1, config.workers + 1):
                opening.first_workers[wid], _ = spawn_worker(
                    opening, config, program, wid, 1, forked=forked
                )
        except BaseException:
            opening.close()
            raise
    _prestart.discard()  # not taken: hooks, an upgrade, or fewer workers than it expected
    return opening


def spawn_worker(
    opening: Opening,
    config: RunConfig,
    program: Sequence[str],
    wid: int,
    generation: int,
    *,
    forked: Callable[[RunConfig], object] | None = None,
) -> tuple[int, str]:
    """Start worker ``wid`` of ``generation`` on the opening's sockets: (pid, debug path).

    ``forked``: the worker prestarted before the master read its options
    (tether._prestart), or else a fork of this interpreter, calls it with the
    worker's resolved config (tether._forkstart) instead of running ``program``; the
    fork is skipped when this process runs more than one thread. Raises
    OSError if the system refuses the process.
    """
    debug_path = os.path.join(opening.rundir, f"w{wid}.sock")
    contract = WorkerContract(
        notify_address=opening.rx.path,
        # The pipe's read end follows the app's sockets in the child (sockets.spawn).
        parent_fd=sockets_mod.LISTEN_FDS_START + len(opening.app_socks),
        parent_pid=os.getpid(),
        worker_id=wid,
        generation=generation,
        final_metrics=final_path(debug_path),  # its final counts, for /metrics
        stop_plan=opening.stop_plan_path,
    )
    env = {**opening.worker_env, **contract.to_env()}
    named = [("app", s) for s in opening.app_socks]
    if forked is not None:
        listen, fds = sockets_mod.listen_env(named)
        args = worker_argv(config, debug_path, program=())
        resolved = config.for_worker(debug_path=debug_path)  # what it would parse from args
        fds.append(opening.parent_r)
        child_env = {**env, **listen}
        prestarted = _prestart.take()  # begun before the master read its options
        if prestarted is not None:
            try:
                pid = prestarted.launch(resolved, args, env=child_env, fds=fds, cwd=opening.cwd)
            except OSError:
                prestarted.kill()  # gone: fork or exec as if there had been none
            else:
                log.debug(
                    "worker %d (pid %d) is the one begun before the options were read", wid, pid
                )
                return pid, debug_path
        # A fork copies one thread: a lock another thread held would stay held in the child
        # (a --log-config whose handler runs a thread, say); then the worker is exec'd.
        if threading.active_count() == 1:
            run = functools.partial(forked, resolved)
            pid = fork_worker(run, args, env=child_env, fds=fds, cwd=opening.cwd)
            return pid, debug_path
    pid, fds = sockets_mod.spawn(
        worker_argv(config, debug_path, program),
        env=env,
        sockets=named,
        extra_fds=[opening.parent_r],
        cwd=opening.cwd,
        new_process_group=True,  # terminal signals go to the master, which decides
    )
    assert fds[0] == contract.parent_fd
    return pid, debug_path


def make_rundir() -> str:
    """Create this master's private runtime directory; ConfigError (one line) if it cannot."""
    base = runtime_base()
    fix = "set TMPDIR (or XDG_RUNTIME_DIR) to a short, writable directory such as /tmp"
    probe = os.path.join(base, f"{RUNDIR_PREFIX}{os.getpid()}-xxxxxxxx", _LONGEST_NAME)
    if len(os.fsencode(probe)) > _MAX_SOCKET_PATH:
        msg = (
            f"the master's runtime directory would be in {base}, too long a path for its "
            f"unix sockets ({len(os.fsencode(probe))} bytes, at most {_MAX_SOCKET_PATH}); {fix}"
        )
        raise ConfigError(msg)
    remove_stale_rundirs(base)
    try:
        return tempfile.mkdtemp(prefix=f"{RUNDIR_PREFIX}{os.getpid()}-", dir=base)
    except OSError as exc:
        msg = f"cannot create the master's runtime directory in {base}: {exc.strerror}; {fix}"
        raise ConfigError(msg) from exc


def rundir_failed(path: str, exc: OSError) -> ConfigError:
    """The error for a socket that cannot be created in the runtime directory (full disk...)."""
    return ConfigError(
        f"cannot create a socket in the master's runtime directory {path}: {exc.strerror}; "
        "free some space there, or set TMPDIR (or XDG_RUNTIME_DIR) to another directory"
    )


def remove_stale_rundirs(base: str) -> list[str]:
    """Remove this user's ``tether-master-<pid>-*`` directories whose master is gone."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(RUNDIR_PREFIX):
            continue
        pid_text = entry.name.removeprefix(RUNDIR_PREFIX).partition("-")[0]
        if not pid_text.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(
                follow_symlinks=False
            ):
                continue
            # A pid is only a hint: another PID namespace sharing this directory (a
            # container, a sandbox) has its own numbers. A master that is alive holds
            # its notify socket; only a directory nobody holds is stale.
            if _alive(int(pid_text)) or _in_use(entry.path):
                continue
            shutil.rmtree(entry.path)
            removed.append(entry.path)
            log.info("removed %s, left by master %s, which is gone", entry.path, pid_text)
    return removed


def _in_use(directory: str) -> bool:
    """Whether a master holds this runtime directory's notify socket (or is creating it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(os.path.join(directory, "notify.sock"))
        except FileNotFoundError:
            # Not bound yet (a master starting right now) or never bound: judge by age.
            return time.time() - os.stat(directory).st_mtime < _STARTING_GRACE
        except OSError:
            return False  # refused: the socket's owner has gone
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def logical_cwd() -> str:
    """The working directory as the user named it (``$PWD`` if it is the same place).

    Deploys often switch a ``current`` symlink; a successor started in the
    logical path sees the new release, one started in the resolved path would
    keep the old one.
    """
    real = os.getcwd()
    pwd = os.environ.get("PWD", "")
    if pwd and os.path.isabs(pwd):
        with contextlib.suppress(OSError):
            if os.path.samefile(pwd, real):
                return pwd
    return real
