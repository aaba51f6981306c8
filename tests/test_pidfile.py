"""The pidfile: checked before anything starts, one live owner, never written through a symlink."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from masterproc import pids_gone
from tether._pidfile import PidFile
from tether.errors import ConfigError

from proc import get, run_cli, tether


def test_claim_writes_this_process_atomically(tmp_path: Path) -> None:
    """A fresh claim writes our pid through a rename; no temporary file is left behind."""
    path = tmp_path / "tether.pid"
    path.write_text("999999999\n")  # a pid that cannot exist: stale
    inode = path.stat().st_ino
    claim = PidFile.claim(str(path), environ={})
    assert path.read_text() == f"{os.getpid()}\n"
    assert path.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tether.pid"]
    claim.release()
    assert not path.exists()


def test_live_owner_is_refused(tmp_path: Path) -> None:
    """A file naming a live process that is not our parent is not ours to take."""
    path = tmp_path / "tether.pid"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            path.write_text(f"{other.pid}\n")
            with pytest.raises(ConfigError) as info:
                PidFile.claim(str(path), environ={})
            assert str(info.value) == (
                f"already running as pid {other.pid} (pidfile {path}); stop it first, "
                "or give this instance another --pidfile"
            )
            assert path.read_text() == f"{other.pid}\n"
        finally:
            other.kill()


def test_successor_takes_over_its_parent_only_once_it_serves(tmp_path: Path) -> None:
    """A reload's copy may take its parent's file, and names itself only when serving."""
    path = tmp_path / "tether.pid"
    path.write_text(f"{os.getppid()}\n")
    claim = PidFile.claim(str(path), environ={"TETHER_HANDOFF_NOTIFY": "/x"})
    assert path.read_text() == f"{os.getppid()}\n"
    claim.serving()
    assert path.read_text() == f"{os.getpid()}\n"
    claim.release()
    assert not path.exists()


def test_release_leaves_a_file_that_names_someone_else(tmp_path: Path) -> None:
    """After a handover the file names the successor; the old process must not remove it."""
    path = tmp_path / "tether.pid"
    claim = PidFile.claim(str(path), environ={})
    path.write_text("12345\n")
    claim.release()
    assert path.read_text() == "12345\n"


def test_missing_directory_names_the_fix(tmp_path: Path) -> None:
    """A pidfile in a directory that does not exist is a usage error naming it."""
    path = tmp_path / "nope" / "tether.pid"
    with pytest.raises(ConfigError) as info:
        PidFile.claim(str(path), environ={})
    assert str(info.value) == (
        f"cannot write the pidfile {path}: its directory {path.parent} does not exist; "
        "create it (writable by this user) or choose another --pidfile"
    )


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    """Another user's symlink at the old predictable temporary name does not redirect the write."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "tether.pid"
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (tmp_path / f".tether.pid.{pid}.tmp").symlink_to(victim)
    PidFile.claim(str(path), environ={})
    assert victim.read_text() == "precious\n"
    assert path.read_text() == f"{os.getpid()}\n"
    assert not path.is_symlink()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_pidfile_names_the_process_and_a_second_instance_is_refused(
    tmp_path: Path, workers: str
) -> None:
    """Both modes write the pidfile; a second instance on it exits 2 and leaves it alone."""
    pidfile = tmp_path / "svc.pid"
    with tether("plain:app", "--workers", workers, "--pidfile", str(pidfile)) as t:
        t.ready()
        assert t.proc is not None
        assert pidfile.read_text() == f"{t.proc.pid}\n"
        # Its own TMPDIR (short: unix sockets go there): a master's start sweeps what dead
        # masters left there and says so, and the parallel suite's killed masters would add
        # that line to the one expected.
        with tempfile.TemporaryDirectory(prefix="tether-", dir="/tmp") as own:
            second = run_cli("run", "plain:app", "--bind", "127.0.0.1:0", "--no-debug",
                             "--workers", workers, "--pidfile", str(pidfile),
                             env={"TMPDIR": own})  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"tether: error: already running as pid {t.proc.pid} (pidfile {pidfile}); "
            "stop it first, or give this instance another --pidfile"
        ]
        assert pidfile.read_text() == f"{t.proc.pid}\n"
        assert get(t.port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    assert not pidfile.exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_missing_pidfile_directory_fails_before_anything_starts(
    tmp_path: Path, workers: str
) -> None:
    """A missing directory: one line, exit 2, and the port was never bound."""
    pidfile = tmp_path / "missing" / "svc.pid"
    with tether("plain:app", "--workers", workers, "--pidfile", str(pidfile)) as t:
        assert t.wait(20) == 2
        err = t.stderr().strip().splitlines()
    assert err == [
        f"tether: error: cannot write the pidfile {pidfile}: its directory {pidfile.parent} "
        "does not exist; create it (writable by this user) or choose another --pidfile"
    ]


def test_reload_of_one_process_rewrites_the_pidfile(tmp_path: Path) -> None:
    """--workers 0: after a HUP the pidfile names the successor, which then owns it."""
    pidfile = tmp_path / "svc.pid"
    successor = 0
    with tether("plain:app", "--pidfile", str(pidfile)) as t:
        first = int(t.wait_for("READY")["MAINPID"])
        assert pidfile.read_text() == f"{first}\n"
        t.signal(signal.SIGHUP)
        try:
            successor = int(t.wait_for("READY")["MAINPID"])
            assert successor != first
            assert t.wait() == 0
            assert pidfile.read_text() == f"{successor}\n"
            os.kill(successor, signal.SIGTERM)
            assert pids_gone([successor], 30) == []
            assert not pidfile.exists()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(successor, signal.SIGKILL)


def test_control_socket_needs_a_master(tmp_path: Path) -> None:
    """--control with --workers 0 is refused with the alternative, not silently ignored."""
    result = run_cli("run", "plain:app", "--workers", "0", "--control", str(tmp_path / "c"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tether: error: --control needs a master (--workers 1 or more); with --workers 0, "
        "signal the process instead (HUP reloads, TERM stops; --pidfile names it)"
    )
