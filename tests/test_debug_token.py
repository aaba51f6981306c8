"""Who may read the debug server: the token (from a file or the environment, never visible to
other local users; any case of its scheme), and the Host check against DNS rebinding."""

from __future__ import annotations

import contextlib
import http.client
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


def status_with(port: int, path: str, headers: dict[str, str]) -> int:
    """One GET with these headers (``Host`` among them) on its own connection: the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    finally:
        conn.close()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_rebound_name_gets_403_while_loopback_names_and_probes_pass(workers: str) -> None:
    """Host: evil.example gets 403 on the console, dumps and /metrics; loopback and listed pass."""
    with tether("echo:app", "--workers", workers, "--debug-allowed-hosts", "debug.internal") as t:
        t.ready()
        port = t.debug_port
        paths = ["/debug/", "/debug/?format=json", "/debug/tasks", "/debug/threads", "/metrics"]
        for path in paths:
            assert status_with(port, path, {"Host": "evil.example"}) == 403, path
            assert status_with(port, path, {"Host": f"evil.example:{port}"}) == 403, path
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
                assert status_with(port, path, {"Host": host}) == 200, (path, host)
            assert status_with(port, path, {"Host": f"debug.internal:{port}"}) == 200, path
        for path in ("/healthz", "/readyz"):
            assert status_with(port, path, {"Host": "evil.example"}) == 200, path
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_lower_case_bearer_scheme_is_accepted(workers: str) -> None:
    """Authorization: bearer TOKEN (RFC 7235: the scheme is case-insensitive) opens /debug/*."""
    with tether("envcheck:app", "--workers", workers, TETHER_DEBUG_TOKEN=SECRET) as t:
        t.ready()
        for scheme in ("bearer", "Bearer", "BEARER"):
            auth = {"Authorization": f"{scheme} {SECRET}"}
            assert status_with(t.debug_port, "/debug/threads", auth) == 200, scheme
        assert status_with(t.debug_port, "/debug/threads", {"Authorization": "bearer no"}) == 401
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
