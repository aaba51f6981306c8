"""A failed start names its cause once, in both process modes, and leaves nothing listening."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from proc import APPS, free_port

CASES = [
    ("no_such_module:app", "cannot import 'no_such_module': no such module"),
    ("startup_fails:nope", "module 'startup_fails' has no attribute 'nope'"),
    ("startup_fails:SETTINGS", "'startup_fails:SETTINGS' is a dict, which is neither"),
    ("startup_fails:app", "database db:5432 unreachable"),
    ("broken_import:app", "raised RuntimeError: settings file missing"),
]


def refused(port: int) -> bool:
    """Nothing accepts connections on the port any more."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("workers", ["0", "1"], ids=["one-process", "master"])
@pytest.mark.parametrize(("target", "cause"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_app_says_why_once(target: str, cause: str, workers: str) -> None:
    """Exit 3; the cause appears exactly once; six lines at most; nothing left listening."""
    port, debug = free_port(), free_port()
    argv = [sys.executable, "-m", "tether", "run", target, "--workers", workers]
    argv += ["--bind", f"127.0.0.1:{port}", "--debug-bind", f"127.0.0.1:{debug}"]
    proc = subprocess.run(argv, cwd=APPS, capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count(cause) == 1, proc.stderr
    assert len(lines) <= 6, proc.stderr
    if workers == "1":
        assert lines[-1].startswith("tether: error: the app failed to start: worker 1 "), lines
        assert lines[-1].endswith("exited with code 3 before READY"), lines
    assert refused(port) and refused(debug)
