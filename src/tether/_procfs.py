"""The operating-system seam of leak detection: open fds and child processes.

Written by hand rather than taken from psutil because the whole need is a few
reads of ``/proc`` text files; a compiled dependency for that would be the
heavier choice. Everything the leak detector asks of the OS goes through one
:class:`ProcFS` object, so tests can point it at a fake tree.

Invariants: nothing here leaves a file descriptor open behind it (the
directory listing's own fd is closed before its entries are examined, and is
skipped), and a missing ``/proc`` (macOS, a locked-down sandbox) yields empty
results, so the detector checks fewer kinds instead of failing.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import stat
from dataclasses import dataclass

__all__ = ["ChildProcess", "OpenFd", "ProcFS"]

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
_UNIX_TYPES = {"0001": "stream", "0002": "dgram", "0005": "seqpacket"}
_UNIX_LISTENING = 0x00010000
_PROC_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "zombie: exited, never waited for",
    "X": "dead",
}


@dataclass(frozen=True)
class OpenFd:
    """One open file descriptor of this process."""

    fd: int
    #: "socket", "pipe", "file", "directory", "device" or "other" (epoll, eventfd...).
    kind: str
    #: (fd, st_dev, st_ino): a closed fd reopened on another object is a different key.
    key: tuple[str, int, int, int]


@dataclass(frozen=True)
class ChildProcess:
    """One direct child process of this process (running or not yet reaped)."""

    pid: int
    #: A letter from /proc/PID/stat: R, S, D, Z...
    state: str
    #: ("process", pid, start time in clock ticks): a reused pid is a different key.
    key: tuple[str, int, int]

    @property
    def zombie(self) -> bool:
        """True once the child has exited but its parent has not waited for it."""
        return self.state == "Z"

    def describe_state(self) -> str:
        """The state in words."""
        return _PROC_STATES.get(self.state, self.state)


class ProcFS:
    """Reads what leak detection needs from ``/proc`` (or ``/dev/fd`` where there is no /proc)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    # -- file descriptors ---------------------------------------------------

    def open_fds(self) -> list[OpenFd]:
        """Every fd open in this process, with its kind; empty if the OS does not say."""
        try:
            names = os.listdir(f"{self.root}/self/fd")
        except OSError:
            try:
                names = os.listdir("/dev/fd")
            except OSError:
                return []
        result = []
        for name in names:
            fd = int(name)
            try:
                # The listing's own directory fd is closed by now: EBADF skips it.
                st = os.fstat(fd)
            except OSError:
                continue
            result.append(OpenFd(fd, _fd_kind(st.st_mode), ("fd", fd, st.st_dev, st.st_ino)))
        return result

    def describe_fd(self, fd: OpenFd, sockets: dict[int, str]) -> str:
        """What the fd points at: a path, a pipe, or a socket's addresses and state."""
        try:
            target = os.readlink(f"{self.root}/self/fd/{fd.fd}")
        except OSError:
            return fd.kind
        if fd.kind == "socket":
            return sockets.get(fd.key[3], target)
        return target

    def socket_table(self) -> dict[int, str]:
        """Socket inode -> "tcp 127.0.0.1:8080 LISTEN"-style text, for this network namespace."""
        table: dict[int, str] = {}
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            for fields in self._rows(f"{self.root}/self/net/{proto}"):
                if len(fields) < 10:
                    continue
                local, remote = _inet(fields[1]), _inet(fields[2])
                text = f"{proto} {local}"
                if not remote.endswith(":0"):
                    text += f" -> {remote}"
                if proto.startswith("tcp"):
                    text += " " + _TCP_STATES.get(fields[3], fields[3])
                table[int(fields[9])] = text
        for fields in self._rows(f"{self.root}/self/net/unix"):
            if len(fields) < 7:
                continue
            kind = _UNIX_TYPES.get(fields[4], fields[4])
            path = fields[7] if len(fields) > 7 else "(unnamed)"
            listening = int(fields[3], 16) & _UNIX_LISTENING
            table[int(fields[6])] = f"unix {kind} {path}" + (" LISTEN" if listening else "")
        return table

    # -- child processes ----------------------------------------------------

    def children(self) -> list[ChildProcess]:
        """Every direct child of this process, including exited ones not yet waited for."""
        pids = self._child_pids()
        result = []
        for pid in sorted(pids):
            fields = self._stat(pid)
            if fields is None:
                continue
            # Fields after "(comm)": state is 3rd, start time the 22nd of the whole line.
            result.append(ChildProcess(pid, fields[0], ("process", pid, int(fields[19]))))
        return result

    def command_line(self, pid: int) -> str:
        """The child's command line, or its name in brackets once it has exited."""
        try:
            with open(f"{self.root}/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            raw = b""
        if raw:
            args = raw.rstrip(b"\0").split(b"\0")
            return shlex.join(arg.decode(errors="replace") for arg in args)
        try:
            with open(f"{self.root}/{pid}/comm") as f:
                return f"[{f.read().strip()}]"
        except OSError:
            return "?"

    def _child_pids(self) -> set[int]:
        me = os.getpid()
        pids: set[int] = set()
        try:
            tids = os.listdir(f"{self.root}/self/task")
        except OSError:
            return pids
        try:
            for tid in tids:
                try:
                    with open(f"{self.root}/self/task/{tid}/children") as f:
                        pids.update(int(p) for p in f.read().split())
                except FileNotFoundError:
                    if os.path.exists(f"{self.root}/self/task/{tid}"):
                        raise  # the thread exists, so the kernel lacks the file
        except FileNotFoundError:
            # Kernels without CONFIG_PROC_CHILDREN: find children by their parent pid.
            for name in os.listdir(self.root):
                if name.isdigit():
                    fields = self._stat(int(name))
                    if fields is not None and int(fields[1]) == me:
                        pids.add(int(name))
        return pids

    def _stat(self, pid: int) -> list[str] | None:
        try:
            with open(f"{self.root}/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return None
        # The command name may hold spaces and parentheses; it ends at the last ")".
        return text[text.rfind(")") + 2 :].split()

    @staticmethod
    def _rows(path: str) -> list[list[str]]:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return []
        return [line.split() for line in lines]


def _fd_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _inet(text: str) -> str:
    """ "0100007F:1F90" -> "127.0.0.1:8080" (the kernel prints each 32-bit word host-endian)."""
    addr_hex, _, port_hex = text.partition(":")
    raw = bytes.fromhex(addr_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    port = int(port_hex, 16)
    if len(words) == 4:
        return f"{ipaddress.IPv4Address(words)}:{port}"
    return f"[{ipaddress.IPv6Address(words)}]:{port}"
