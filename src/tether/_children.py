"""Child processes of the master: start, watch, signal, and keep their last words.

The master learns that a child exited from a pidfd (``pidfd_open``) watched by
the event loop, and reaps exactly that child with ``waitpid``: no SIGCHLD
handler, no polling, and a pid is never signalled after it was reaped (signals
go through the pidfd, so a recycled pid can never be hit).

A child's stderr goes through a pipe to the master, which copies whole lines
to its own stderr and keeps the last ones: when a worker fails to start, the
log line that reports it carries the worker's own error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from tether._oomkill import OomWatch
from tether._reaper import disown, own
from tether.sockets import spawn

__all__ = ["Child", "describe_exit", "start_child"]

log = logging.getLogger("tether.master")

_TAIL_LINES = 40
_MAX_LINE = 64 * 1024


def describe_exit(code: int) -> str:
    """'exited with code 3' or 'was killed by SIGKILL', from an exit code (negative = signal)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


class Child:
    """One child process: its exit as a future, its stderr tail, and a safe way to signal it.

    Resource handling: owns the pidfd and the stderr pipe's read end; both are
    closed when the child has exited and its output is drained.
    """

    def __init__(self, pid: int, name: str, stderr_fd: int | None) -> None:
        self.pid = pid
        self.name = name
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._partial = b""
        self._stderr_fd = stderr_fd
        self._output_done = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        own(pid)  # reaped here, by pid: a subreaper leaves it alone
        # Read while the child is alive: once it is gone, so is its /proc/PID/cgroup.
        self._oom = OomWatch.start(pid)
        #: Why the kernel killed it, when it says so (the OOM killer); set at its exit.
        self.killed_because: str | None = None
        self._loop.add_reader(self._pidfd, self._on_exit)
        if stderr_fd is not None:
            os.set_blocking(stderr_fd, False)
            self._loop.add_reader(stderr_fd, self._on_output)
        else:
            self._output_done.set_result(None)

    @property
    def alive(self) -> bool:
        """True until the child has been reaped."""
        return not self.exited.done()

    def signal(self, sig: int) -> bool:
        """Send ``sig`` unless the child is already gone; True if sent."""
        if not self.alive:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def describe_exit(self) -> str:
        """How the child ended, with the kernel's reason for a SIGKILL when it gave one."""
        text = describe_exit(self.exited.result())
        return f"{text} ({self.killed_because})" if self.killed_because else text

    def kill(self) -> bool:
        """SIGKILL the child."""
        return self.signal(signal.SIGKILL)

    async def wait(self, within: float | None = None) -> int | None:
        """The exit code, or None if the child is still running after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(self.exited)
        except TimeoutError:
            return None

    async def wait_output(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until the child's stderr reached end-of-file."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.shield(self._output_done)

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines the child wrote to stderr."""
        kept = list(self._tail)[-lines:]
        if self._partial:
            kept.append(self._partial.decode("utf-8", "replace"))
        return "\n".join(kept)

    def _on_exit(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8  # reaped elsewhere; nothing more to learn
        if pid == 0:
            return
        disown(self.pid)
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self.exited.done():
            code = os.waitstatus_to_exitcode(status)
            if code == -signal.SIGKILL and self._oom is not None:
                self.killed_because = self._oom.cause()
            self.exited.set_result(code)

    def _on_output(self) -> None:
        assert self._stderr_fd is not None
        try:
            data = os.read(self._stderr_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_output()
            return
        chunk = self._partial + data
        lines = chunk.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            self._forward(b"\n".join(lines) + b"\n")
            for line in lines:
                self._tail.append(line.decode("utf-8", "replace"))

    def _close_output(self) -> None:
        if self._stderr_fd is None:
            return
        self._loop.remove_reader(self._stderr_fd)
        os.close(self._stderr_fd)
        self._stderr_fd = None
        if self._partial:
            self._forward(self._partial + b"\n")
            self._tail.append(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        if not self._output_done.done():
            self._output_done.set_result(None)

    @staticmethod
    def _forward(data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), data)

    def close(self) -> None:
        """Stop watching (the child must have exited, or be abandoned on purpose)."""
        if self.alive:
            disown(self.pid)  # nobody waits for it here any more
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
        self._close_output()


def start_child(
    argv: Sequence[str],
    *,
    name: str,
    env: Mapping[str, str],
    sockets: Sequence[tuple[str, socket.socket]] = (),
    extra_fds: Sequence[int] = (),
    capture_stderr: bool = True,
    cwd: str | None = None,
    new_process_group: bool = False,
) -> tuple[Child, list[int]]:
    """Spawn ``argv`` (see :func:`tether.sockets.spawn`) and watch it from the running loop."""
    read_fd: int | None = None
    write_fd: int | None = None
    if capture_stderr:
        read_fd, write_fd = os.pipe()
    try:
        pid, child_fds = spawn(
            argv,
            env=env,
            sockets=sockets,
            extra_fds=extra_fds,
            stderr=write_fd,
            cwd=cwd,
            new_process_group=new_process_group,
        )
    except BaseException:
        if read_fd is not None:
            os.close(read_fd)
        raise
    finally:
        if write_fd is not None:
            os.close(write_fd)
    return Child(pid, name, read_fd), child_fds
