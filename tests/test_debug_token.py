"""The debug token: from a file or the environment, never visible to other local users."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from masterproc import pids_gone

from proc import get, run_cli, tether

SECRET = "s3cret-token-value"


def cmdlines() -> list[str]:
    """Every process's command line, as any local user can read it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
    return found


def token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("source", ["file", "env"])
def test_token_guards_debug_and_stays_out_of_sight(
    tmp_path: Path, workers: str, source: str
) -> None:
    """/debug/* needs the token; no command line shows it; the app's environment lacks it."""
    if source == "file":
        args, env = ["--debug-token-file", str(token_file(tmp_path))], {}
    else:
        args, env = [], {"TETHER_DEBUG_TOKEN": SECRET}
    with tether("envcheck:app", "--workers", workers, *args, **env) as t:  # type: ignore[arg-type]
        t.ready()
        assert get(t.port, "/")[1] == "(unset)"
        assert get(t.debug_port, "/debug/threads")[0] == 401
        assert get(t.debug_port, f"/debug/threads?token={SECRET}")[0] == 200
        assert not [line for line in cmdlines() if SECRET in line]
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_reloaded_process_keeps_the_token_from_the_environment() -> None:
    """--workers 0: after a HUP the successor still guards /debug/* with the same token."""
    successor = 0
    with tether("envcheck:app", TETHER_DEBUG_TOKEN=SECRET) as t:
        t.ready()
        t.signal(signal.SIGHUP)
        try:
            successor = int(t.wait_for("READY")["MAINPID"])
            assert t.wait() == 0
            assert get(t.port, "/")[1] == "(unset)"
            assert get(t.debug_port, "/debug/threads")[0] == 401
            assert get(t.debug_port, f"/debug/threads?token={SECRET}")[0] == 200
        finally:
            if successor:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(successor, signal.SIGTERM)
                assert pids_gone([successor], 30) == []


def test_token_file_open_to_others_is_refused(tmp_path: Path) -> None:
    """A token file other users can read is refused before anything starts, naming the fix."""
    path = token_file(tmp_path, 0o644)
    result = run_cli("run", "envcheck:app", "--debug-token-file", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tether: error: --debug-token-file {path} is open to other users (mode 0644); "
        f"run `chmod 600 {path}` (or 640 to share it with a group)"
    )


def test_token_given_twice_is_refused(tmp_path: Path) -> None:
    """--debug-token and --debug-token-file together: one line, exit 2."""
    path = token_file(tmp_path)
    result = run_cli("run", "envcheck:app", "--debug-token", "x", "--debug-token-file", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tether: error: give the debug token one way: --debug-token or --debug-token-file"
    )


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    """A token file that is not there: one line naming it, exit 2."""
    path = tmp_path / "absent"
    result = run_cli("run", "envcheck:app", "--debug-token-file", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tether: error: cannot read --debug-token-file {path}: No such file or directory; "
        "check the path"
    )
