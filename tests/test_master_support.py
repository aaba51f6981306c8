"""The master's runtime directory: where it goes, what a bad one says, what a killed master
left behind. Real masters, loopback only."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from masterproc import MasterProc, free_port, write_app
from tether._opening import remove_stale_rundirs


def run_master(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tether", "run", "hello:app", "--workers", "1"]
    argv += ["--bind", f"127.0.0.1:{free_port()}", "--no-debug"]
    return subprocess.run(
        argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def unwritable_dir(tmp_path: Path) -> str:
    """A directory this user cannot create anything in (root may write anywhere but sysfs)."""
    if os.geteuid() == 0:
        return "/sys"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked)


@pytest.mark.parametrize("where", ["too long", "read-only", "missing"])
def test_an_unusable_tmpdir_is_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    """A TMPDIR that cannot hold the master's sockets: one line naming it and the fix, exit 2."""
    write_app(tmp_path, "v1")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    tmpdir = {
        "too long": str(deep),
        "read-only": unwritable_dir(tmp_path),
        "missing": str(tmp_path / "missing"),
    }[where]
    proc = run_master(tmp_path, {"TMPDIR": tmpdir, "XDG_RUNTIME_DIR": ""})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tether: error: "), lines
    assert tmpdir in lines[0] and "set TMPDIR" in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_xdg_runtime_dir_is_used_and_stale_directories_are_removed(tmp_path: Path) -> None:
    """The runtime directory goes in $XDG_RUNTIME_DIR; a dead master's leftovers are removed."""
    write_app(tmp_path, "v1")
    runtime = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # short: sockets live there
    try:
        _with_runtime_dir(tmp_path, runtime)
    finally:
        shutil.rmtree(runtime)


def _with_runtime_dir(tmp_path: Path, runtime: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = runtime / f"tether-master-{dead.pid}-abcdefgh"
    stale.mkdir()
    (stale / "notify.sock").write_text("")
    foreign = runtime / "tether-master-notapid"
    foreign.mkdir()

    async def scenario() -> None:
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            async with MasterProc(tmp_path, workers=1) as master:
                await master.wait_for("READY")
                master.seen_workers.update(await master.worker_pids())
                ours = [p.name for p in runtime.iterdir()]
                assert not stale.exists(), ours
                assert foreign.exists()
                assert any(name.startswith(f"tether-master-{master.pid}-") for name in ours), ours
            assert sorted(p.name for p in runtime.iterdir()) == ["tether-master-notapid"]
        finally:
            del os.environ["XDG_RUNTIME_DIR"]

    asyncio.run(scenario())


def test_a_held_runtime_directory_is_never_removed(tmp_path: Path) -> None:
    """A pid that looks dead may be another PID namespace's: a held notify socket keeps it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held = tmp_path / f"tether-master-{dead.pid}-held1234"
    held.mkdir()
    gone = tmp_path / f"tether-master-{dead.pid}-gone1234"
    gone.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as owner:
        owner.bind(str(held / "notify.sock"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as former:
            former.bind(str(gone / "notify.sock"))  # bound, then closed: its master is gone
        assert remove_stale_rundirs(str(tmp_path)) == [str(gone)]
        assert held.exists()
