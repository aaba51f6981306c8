"""The first generation's workers are forks of the master's opening; later ones are exec'd.

A forked worker must hold what an exec'd one would: its own process group, the app's
sockets and the parent pipe's read end, and none of the master's own fds (the notify
socket, the pipe's write end, the debug listener), or the master's death would go
unnoticed and its sockets would outlive it. Real processes on loopback.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from waiting import eventually

from proc import get, tether


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


def _targets(pid: int) -> dict[int, str]:
    found: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return found


def _report(port: int) -> dict[str, object]:
    status, body, _ = get(port)
    assert status == 200, body
    report: dict[str, object] = json.loads(body)
    return report


def _master_pid(worker: int) -> int:
    with open(f"/proc/{worker}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_a_first_worker_is_forked_and_holds_none_of_the_masters_fds(tmp_path: Path) -> None:
    """Forked: the master's command line, its own group, only stdio + sockets + pipe's read end."""
    with tether("fdreport:app", "--workers", "1") as t:
        t.ready()
        report = _report(t.port)
        worker = int(str(report["pid"]))
        master = _master_pid(worker)
        assert _cmdline(worker) == _cmdline(master)  # a fork: no interpreter started anew
        assert report["pgid"] == worker
        fds = {int(k): v for k, v in dict(report["fds"]).items()}  # type: ignore[call-overload]
        listening, pipe = fds[3]["target"], fds[4]["target"]
        assert listening.startswith("socket:") and pipe.startswith("pipe:")
        # Each held once: a second copy of the listening socket would keep accepting
        # after the worker stops (the drain delay's end), a second pipe end hide EOF.
        assert [v["target"] for v in fds.values()].count(listening) == 1, fds
        assert [v["target"] for v in fds.values()].count(pipe) == 1, fds
        assert fds[4]["mode"] == os.O_RDONLY  # the parent pipe's read end, never its write end
        assert not [fd for fd, v in fds.items() if v["target"] == pipe and v["mode"] != os.O_RDONLY]
        # Nothing else the master holds reaches the worker: not its notify socket, not its
        # debug listener (they would keep the master's resources alive after it).
        inherited = {fds[fd]["target"] for fd in (0, 1, 2, 3, 4)}
        # (An anon_inode's name is its kind, not its identity: each process has its own.)
        mine = {v["target"] for v in fds.values() if not v["target"].startswith("anon_inode:")}
        shared = set(_targets(master).values()) & mine
        assert shared - inherited - {"/dev/null"} == set(), fds
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_a_reloaded_generation_is_exec_d_afresh(tmp_path: Path) -> None:
    """After a HUP the new worker is a new interpreter (`python -m tether`): it loads new code."""
    with tether("fdreport:app", "--workers", "1") as t:
        t.ready()
        first = int(str(_report(t.port)["pid"]))
        master = _master_pid(first)
        t.signal(signal.SIGHUP)

        def successor() -> int | None:
            pid = int(str(_report(t.port)["pid"]))
            return pid if pid != first else None

        second = eventually(successor, "the new generation serves")
        assert _cmdline(second)[1:3] == ["-m", "tether"], _cmdline(second)
        assert _master_pid(second) == master
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
