"""Listening sockets: parse an address, bind it, or inherit it; hand it on.

Every process in tether that serves receives its listening sockets the same
way, through systemd's socket-passing protocol (``LISTEN_FDS``, ``LISTEN_PID``,
``LISTEN_FDNAMES``): a worker from its master, a new master from the old one
during an upgrade, a single process from systemd socket activation. This module
is both ends of that protocol.

Invariant: a socket this module creates or adopts is never inherited by a
child by accident. Sockets are close-on-exec; the only way one reaches a child
is :func:`spawn`, which places the chosen sockets on fds 3, 4, ... of that
child and nowhere else.

Why not ``subprocess``: ``Popen(pass_fds=...)`` keeps each fd's number, but the
protocol needs the sockets *at* 3, 4, ...; remapping them with ``preexec_fn``
is unsafe in a process with threads. ``os.posix_spawn`` with ``dup2`` file
actions moves them into place without running Python code in the child.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import stat
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tether.errors import BindError, ConfigError

__all__ = [
    "Address",
    "parse_address",
    "is_loopback",
    "bind",
    "bound_address",
    "inherit",
    "listen_env",
    "spawn",
    "LISTEN_FDS_START",
]

log = logging.getLogger("tether.sockets")

#: The first fd of passed sockets, by the protocol (after stdin, stdout, stderr).
LISTEN_FDS_START = 3

_LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True)
class Address:
    """Where to listen: a TCP host and port, or a unix socket path.

    ``str(address)`` gives back the form :func:`parse_address` accepts:
    ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``.
    """

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    #: For ``fd:N``: a listening socket this process was started with.
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "fd":
            return f"fd:{self.fd}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, *, flag: str = "--bind") -> Address:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH`` or ``fd:N``.

    Raises :class:`~tether.errors.ConfigError` with one line naming ``flag``,
    what was wrong and an example of the right form.
    """
    parsed = _parse(text)
    if isinstance(parsed, Address):
        return parsed
    msg = f"{flag} {text!r}: {parsed}; for example 127.0.0.1:8080, [::1]:8080 or unix:/run/app.sock"
    raise ConfigError(msg)


def _parse(text: str) -> Address | str:
    """The address, or what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        return "the address is empty"
    if text != text.strip():
        return "the address has surrounding spaces"
    if text.startswith("fd:"):
        number = text[len("fd:") :]
        if not number.isascii() or not number.isdigit():
            return f"the file descriptor {number!r} is not a number"
        return Address("fd", fd=int(number))
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            return "the unix socket path is empty"
        if "\0" in path:
            return "the unix socket path contains a NUL byte"
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            return f"the unix socket path is longer than {_UNIX_PATH_MAX} bytes"
        return Address("unix", path=path)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return "the IPv6 address has no closing bracket"
        host, rest = text[1:close], text[close + 1 :]
        if not host:
            return "the host inside the brackets is empty"
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        if version != 6:
            return "brackets are only for IPv6 addresses"
        if not rest.startswith(":"):
            return "the port is missing after the closing bracket"
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return "the port is missing"
        if not host:
            return "the host is empty"
        if ":" in host:
            return "an IPv6 address needs brackets"
        if any(c in host for c in "[]/ "):
            return f"{host!r} is not a host name or address"
    if not port_text:
        return "the port is missing"
    if not port_text.isascii() or not port_text.isdigit():
        return f"the port {port_text!r} is not a number"
    port = int(port_text)
    if port > 65535:
        return f"the port {port} is out of range 0-65535"
    return Address("tcp", host=host, port=port)


def is_loopback(address: Address) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost, unix sockets."""
    if address.kind == "unix":
        return True
    if address.host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def _bind_hint(err: OSError, flag: str) -> tuple[str, str]:
    """(reason, hint) for a failed bind, worded for the person who typed the flag."""
    code = err.errno
    if code == errno.EADDRINUSE:
        return "address already in use", f"is another server running? pick another port with {flag}"
    if code == errno.EACCES:
        return (
            "permission denied",
            f"ports below 1024 need privileges; pick a port >= 1024 with {flag}",
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            "address not available on this machine",
            f"use an address of one of this machine's interfaces with {flag}",
        )
    reason = os.strerror(code) if code else str(err)
    return reason.lower(), f"check the address given to {flag}"


def bind(
    address: Address, *, backlog: int = 2048, flag: str = "--bind", mode: int | None = None
) -> socket.socket:
    """A listening, close-on-exec socket on ``address``.

    TCP sockets get ``SO_REUSEADDR`` (a restart does not wait out TIME_WAIT);
    IPv6 sockets are IPv6-only (bind ``0.0.0.0`` as well for both families).
    A unix socket's directory must exist; a stale socket file (nothing
    listening on it) is replaced, a live one or a file that is not a socket is
    an error. ``mode``, for a unix socket, is applied before it listens (so
    nobody connects through looser permissions in between).

    Error handling: raises :class:`~tether.errors.BindError` naming the
    address, the reason and what to do; nothing is left open.
    """
    if address.kind == "unix":
        return _bind_unix(address, backlog, flag, mode)
    if address.kind == "fd":
        return _adopt_fd(address, backlog, flag)
    # As bytes, an ASCII host skips the IDNA codec (and its imports) on every start's path.
    host = address.host.encode("ascii") if address.host.isascii() else address.host
    try:
        infos = socket.getaddrinfo(
            host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(
            str(address), f"cannot resolve host {address.host!r}", f"check the host in {flag}"
        ) from exc
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason, hint = _bind_hint(exc, flag)
        raise BindError(str(address), reason, hint) from exc
    return sock


def _bind_unix(address: Address, backlog: int, flag: str, mode: int | None) -> socket.socket:
    path = address.path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BindError(
            str(address),
            f"directory {directory} does not exist",
            f"create it first or choose another path with {flag}",
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise BindError(
                str(address),
                "the path exists and is not a socket",
                f"remove it or choose another path with {flag}",
            )
        if _unix_is_live(path):
            raise BindError(
                str(address),
                "address already in use",
                f"is another server running? choose another path with {flag}",
            )
        log.debug("removing stale unix socket %s", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EACCES:
            hint = f"choose a path in a directory you can write with {flag}"
            raise BindError(str(address), "permission denied", hint) from exc
        reason, hint = _bind_hint(exc, flag)
        raise BindError(str(address), reason, hint) from exc
    return sock


def _adopt_fd(address: Address, backlog: int, flag: str) -> socket.socket:
    """The stream socket this process was given on fd N (uvicorn's ``--fd``), listening."""
    hint = f"start tether with a bound stream socket on that descriptor, or use another {flag}"
    try:
        if not stat.S_ISSOCK(os.fstat(address.fd).st_mode):
            raise BindError(str(address), "the descriptor is not a socket", hint)
        sock = socket.socket(fileno=address.fd)
    except OSError as exc:
        raise BindError(str(address), "no such open descriptor", hint) from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()  # not ours to close: the descriptor stays as it was given
        raise BindError(str(address), "the socket is not a stream socket", hint)
    try:
        sock.set_inheritable(False)
        sock.listen(backlog)
    except OSError as exc:
        sock.detach()
        reason, hint = _bind_hint(exc, flag)
        raise BindError(str(address), reason, hint) from exc
    return sock


def _unix_is_live(path: str) -> bool:
    """True if something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # for example EAGAIN: a full backlog still means a live listener
    finally:
        probe.close()
    return True


def bound_address(sock: socket.socket) -> Address:
    """The address ``sock`` actually listens on (the real port when 0 was asked for)."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return Address("unix", path=name if isinstance(name, str) else os.fsdecode(name))
    host, port = sock.getsockname()[:2]
    return Address("tcp", host=host, port=port)


def inherit(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[tuple[str, socket.socket]] | None:
    """Receive the sockets passed by the systemd protocol, as ``(name, socket)`` pairs.

    The fds are ``3 .. 3 + LISTEN_FDS - 1``; they count only if ``LISTEN_PID``
    is this process (otherwise the variables are stale or meant for another
    process: they are ignored, and a debug line says so). Names come from
    ``LISTEN_FDNAMES`` (``unknown`` when absent). Returns None when nothing was
    passed.

    Resource handling: the three variables are removed from ``environ``
    (``os.environ`` by default) in every case, so a child never misreads them;
    the adopted fds become close-on-exec and are owned by the returned sockets.

    Error handling: raises :class:`~tether.errors.ConfigError` when the
    variables are malformed or a passed fd is not a socket.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in _LISTEN_VARS}
    count_text, pid_text, names_text = (values[name] for name in _LISTEN_VARS)
    if count_text is None:
        return None
    me = os.getpid() if pid is None else pid
    if pid_text is None or pid_text.strip() != str(me):
        log.debug(
            "ignoring LISTEN_FDS=%s: LISTEN_PID=%s is not this process (%d); "
            "the variables are stale or meant for another process",
            count_text,
            pid_text,
            me,
        )
        return None
    try:
        count = int(count_text)
    except ValueError:
        count = -1
    if count < 0:
        msg = f"LISTEN_FDS={count_text!r} is not a count of sockets"
        raise ConfigError(msg)
    if count == 0:
        return None
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        if names:
            log.warning(
                "LISTEN_FDNAMES has %d names for %d sockets; naming them all 'unknown'",
                len(names),
                count,
            )
        names = ["unknown"] * count
    result: list[tuple[str, socket.socket]] = []
    try:
        for offset, name in enumerate(names):
            fd = LISTEN_FDS_START + offset
            try:
                os.set_inheritable(fd, False)
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                msg = (
                    f"LISTEN_FDS says fd {fd} ({name}) was passed, but it is not a socket "
                    f"({exc.strerror}); check what started this process"
                )
                raise ConfigError(msg) from exc
            result.append((name or "unknown", sock))
    except BaseException:
        for _, sock in result:
            sock.close()
        raise
    return result


def listen_env(
    named_sockets: Sequence[tuple[str, socket.socket]], pid: int | None = None
) -> tuple[dict[str, str], list[int]]:
    """The sender side: the environment and the fds that pass ``named_sockets`` to a child.

    Returns ``(env, fds)``: ``fds[i]`` must land on fd ``3 + i`` in the child,
    which is what :func:`spawn` arranges. ``LISTEN_PID`` must name the child,
    whose pid is unknown until it exists; when ``pid`` is None it is left out
    of ``env`` and :func:`spawn` sets it in the child itself (as systemd does,
    after fork).
    """
    names = [name for name, _ in named_sockets]
    if any(":" in name for name in names):
        msg = "socket names cannot contain ':'"
        raise ValueError(msg)
    env = {"LISTEN_FDS": str(len(named_sockets)), "LISTEN_FDNAMES": ":".join(names)}
    if pid is not None:
        env["LISTEN_PID"] = str(pid)
    return env, [sock.fileno() for _, sock in named_sockets]


# The trampoline: sets LISTEN_PID to its own pid, then execs the real program,
# which keeps that pid. It is the only code that runs between fork and exec.
_TRAMPOLINE = 'cd -- "$0" || exit 127; LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    sockets: Sequence[tuple[str, socket.socket]] = (),
    extra_fds: Sequence[int] = (),
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    cwd: str | None = None,
    new_process_group: bool = False,
) -> tuple[int, list[int]]:
    """Start ``argv`` with ``sockets`` on fds 3, 4, ... by the systemd protocol.

    ``extra_fds`` land right after the sockets; the returned list gives their
    numbers in the child (for example to put in ``TETHER_PARENT_FD``).
    ``stdin``/``stdout``/``stderr``, if given, become fds 0/1/2. ``cwd`` is the
    working directory of the child (a logical path: a symlink is followed anew).
    Signal dispositions the parent changed (SIGPIPE) are reset to default, and
    the signal mask is cleared.

    When sockets are passed, a ``/bin/sh`` trampoline sets ``LISTEN_PID`` to
    its own pid and ``exec``s ``argv``, which keeps that pid: so the variable
    names the child without running Python between fork and exec.

    Resource handling: no fd other than those named reaches the child (every
    other fd tether opens is close-on-exec); the temporary duplicates are
    closed before returning. Returns ``(pid, extra fd numbers in the child)``.
    """
    sock_env, sock_fds = listen_env(sockets)
    wanted = [*sock_fds, *extra_fds]
    # Duplicate every source above the target range first, so that no dup2
    # overwrites a source not yet moved, and none is a no-op dup2 onto itself
    # (which would leave close-on-exec set).
    floor = LISTEN_FDS_START + len(wanted)
    temps: list[int] = []
    try:
        for fd in wanted:
            temps.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor))
        actions: list[tuple[int, int, int]] = []
        for target, temp in ((0, stdin), (1, stdout), (2, stderr)):
            if temp is not None:
                actions.append((os.POSIX_SPAWN_DUP2, temp, target))
        for offset, temp in enumerate(temps):
            actions.append((os.POSIX_SPAWN_DUP2, temp, LISTEN_FDS_START + offset))
        child_env = {k: v for k, v in env.items() if k not in _LISTEN_VARS}
        program = list(argv)
        if sockets:
            child_env.update(sock_env)
        if sockets or cwd is not None:
            directory = cwd if cwd is not None else os.getcwd()
            program = ["/bin/sh", "-c", _TRAMPOLINE, directory, *program]
            if not sockets:
                program[2] = 'cd -- "$0" || exit 127; exec "$@"'
        path = program[0] if os.path.isabs(program[0]) else _which(program[0], child_env)
        default_signals = (signal.SIGPIPE, signal.SIGXFSZ)
        if new_process_group:
            pid = os.posix_spawn(
                path,
                program,
                child_env,
                file_actions=actions,
                setsigmask=(),
                setsigdef=default_signals,
                setpgroup=0,
            )
        else:
            pid = os.posix_spawn(
                path,
                program,
                child_env,
                file_actions=actions,
                setsigmask=(),
                setsigdef=default_signals,
            )
    finally:
        for temp in temps:
            os.close(temp)
    return pid, [LISTEN_FDS_START + len(sock_fds) + i for i in range(len(extra_fds))]


def _which(program: str, env: Mapping[str, str]) -> str:
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, "program not found on PATH", program)
