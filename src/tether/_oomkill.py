"""Whether the kernel's OOM killer ended a child: its memory cgroup's counter says so.

A worker that outgrows its memory limit dies of a SIGKILL that looks like any
other. The kernel counts those kills per memory cgroup: ``oom_kill`` in
``memory.events`` (cgroup v2) or in ``memory.oom_control`` (v1). A
:class:`OomWatch` finds the child's memory cgroup from ``/proc/PID/cgroup``
while the child is alive, reads the counter then, and reads it again when the
child has died of SIGKILL: if it went up, the exit line names the memory
limit as the cause.

Invariant: only the kernel's word is reported. No cgroup, no memory
controller, an unreadable file: no cause is claimed, the exit line stays
"was killed by SIGKILL". The counter is the cgroup's, so an OOM kill of
another process in the same cgroup at the same moment is attributed too;
the line says what the kernel counted, not more.

The OS is read below two roots (``proc`` and ``cgroup``), so a test can give
a fake tree; the real one is ``/proc`` and ``/sys/fs/cgroup``, where a hybrid
host mounts v2 at ``unified/`` and v1's memory controller at ``memory/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["MemoryCgroup", "OomWatch"]

PROC = "/proc"
CGROUP = "/sys/fs/cgroup"

#: memory.max / memory.limit_in_bytes at or above this is "no limit" (v1 writes 2**63 - 4096).
_UNLIMITED = 1 << 62


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _field(text: str | None, name: str) -> int | None:
    """The number after ``name`` in a ``key value`` file (memory.events, memory.oom_control)."""
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class MemoryCgroup:
    """One memory cgroup: where its files are, and how to read them."""

    #: The cgroup as ``/proc/PID/cgroup`` names it ("/system.slice/app.service").
    name: str
    #: Its directory under the cgroup mount.
    directory: str
    version: int

    @classmethod
    def of(
        cls, pid: int | str = "self", *, proc: str = PROC, cgroup: str = CGROUP
    ) -> MemoryCgroup | None:
        """The memory cgroup of ``pid``, or None if there is none this process can read."""
        text = _read(os.path.join(proc, str(pid), "cgroup"))
        if text is None:
            return None
        v1: str | None = None
        v2: str | None = None
        for line in text.splitlines():
            _hierarchy, controllers, name = (
                line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
            )
            if "memory" in controllers.split(","):
                v1 = name
            elif controllers == "" and _hierarchy == "0":
                v2 = name
        # A v1 memory controller, where there is one, is the one that limits memory.
        candidates: list[tuple[str, str, int, str]] = []
        if v1 is not None:
            candidates.append((v1, os.path.join(cgroup, "memory"), 1, "memory.oom_control"))
        if v2 is not None:
            for mount in (cgroup, os.path.join(cgroup, "unified")):
                candidates.append((v2, mount, 2, "memory.events"))
        for name, mount, version, probe in candidates:
            # Inside a container without its own cgroup namespace, the mount is the
            # container's cgroup itself, and the host's path under it does not exist.
            for directory in (os.path.join(mount, name.lstrip("/")), mount):
                if os.path.isfile(os.path.join(directory, probe)):
                    return cls(name, directory, version)
        return None

    def oom_kills(self) -> int | None:
        """How many processes the OOM killer has killed in this cgroup (None: not said)."""
        if self.version == 2:
            return _field(_read(os.path.join(self.directory, "memory.events")), "oom_kill")
        return _field(_read(os.path.join(self.directory, "memory.oom_control")), "oom_kill")

    def limit(self) -> int | None:
        """The memory limit in bytes, or None if there is none (or it cannot be read)."""
        file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        text = (_read(os.path.join(self.directory, file)) or "").strip()
        if not text.isdigit() or int(text) >= _UNLIMITED:
            return None
        return int(text)


@dataclass(frozen=True)
class OomWatch:
    """A child's memory cgroup and its OOM-kill count when the child was started."""

    cgroup: MemoryCgroup
    before: int

    @classmethod
    def start(cls, pid: int, *, proc: str = PROC, cgroup: str = CGROUP) -> OomWatch | None:
        """Watch ``pid`` (alive now); None where the kernel keeps no count we can read."""
        found = MemoryCgroup.of(pid, proc=proc, cgroup=cgroup)
        before = found.oom_kills() if found is not None else None
        if found is None or before is None:
            return None
        return cls(found, before)

    def cause(self) -> str | None:
        """After a SIGKILL: the OOM killer as the cause, if the cgroup's count went up."""
        after = self.cgroup.oom_kills()
        if after is None or after <= self.before:
            return None
        limit = self.cgroup.limit()
        of = f"its memory limit of {_size(limit)}" if limit is not None else "its memory limit"
        counter = "memory.events" if self.cgroup.version == 2 else "memory.oom_control"
        return (
            f"the kernel's OOM killer: cgroup {self.cgroup.name} reached {of}, "
            f"{counter} oom_kill {self.before} -> {after}; raise the limit, or recycle "
            "workers before they grow (--max-requests)"
        )


def _size(octets: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if octets >= scale:
            return f"{octets / scale:.4g} {unit}"
    return f"{octets} bytes"
