"""Where options come from: command line > TETHER_<OPTION> > [tool.tether] / --config > defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proc import APPS, Tether, fetch, free_port


def print_config(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tether run ARGS --print-config` in ``cwd`` with only these TETHER_ variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    for var in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        base.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "tether", "run", *args, "--print-config"],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def line_of(out: str, key: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"{key} = "))


def test_precedence_command_line_environment_file_default(tmp_path: Path) -> None:
    """Each source wins over the ones below it, and --print-config names the winner."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.tether]\napp = "echo:app"\ntimeout-keep-alive = 10\nroot-path = "/file"\n'
    )
    env = {"TETHER_TIMEOUT_KEEP_ALIVE": "20"}
    out = print_config(tmp_path, "--timeout-keep-alive", "30", **env).stdout
    assert line_of(out, "timeout-keep-alive") == "timeout-keep-alive = 30  # command line"
    out = print_config(tmp_path, **env).stdout
    assert line_of(out, "timeout-keep-alive") == (
        "timeout-keep-alive = 20  # environment (TETHER_TIMEOUT_KEEP_ALIVE)"
    )
    out = print_config(tmp_path).stdout
    assert line_of(out, "timeout-keep-alive") == (
        "timeout-keep-alive = 10  # pyproject.toml [tool.tether]"
    )
    assert line_of(out, "app") == 'app = "echo:app"  # pyproject.toml [tool.tether]'
    assert line_of(out, "backlog") == "backlog = 2048  # default"


def test_ecosystem_variables(tmp_path: Path) -> None:
    """WEB_CONCURRENCY sets --workers below TETHER_WORKERS; PORT serves on 0.0.0.0:$PORT."""
    out = print_config(tmp_path, "echo:app", WEB_CONCURRENCY="3", PORT="9999").stdout
    assert line_of(out, "workers") == "workers = 3  # environment (WEB_CONCURRENCY)"
    assert line_of(out, "bind") == 'bind = ["0.0.0.0:9999"]  # environment (PORT)'
    out = print_config(tmp_path, "echo:app", WEB_CONCURRENCY="3", TETHER_WORKERS="5").stdout
    assert line_of(out, "workers") == "workers = 5  # environment (TETHER_WORKERS)"
    out = print_config(tmp_path, "echo:app", "--port", "8123", PORT="9999").stdout
    assert line_of(out, "bind") == 'bind = ["127.0.0.1:8123"]  # --port: command line'
    out = print_config(tmp_path, "echo:app", TETHER_BIND="127.0.0.1:1 unix:/tmp/x.sock").stdout
    assert line_of(out, "bind") == (
        'bind = ["127.0.0.1:1", "unix:/tmp/x.sock"]  # --bind: environment (TETHER_BIND)'
    )


def test_config_file_given_by_path(tmp_path: Path) -> None:
    """--config PATH reads a TOML file whose keys are at the top level."""
    path = tmp_path / "tether.toml"
    path.write_text('workers = 4\nheader = ["x-a: 1", "x-b: 2"]\naccess-log = false\n')
    out = print_config(APPS, "echo:app", "--config", str(path)).stdout
    assert line_of(out, "workers") == f"workers = 4  # --config {path}"
    assert line_of(out, "header") == f'header = ["x-a: 1", "x-b: 2"]  # --config {path}'
    assert line_of(out, "access-log") == f"access-log = false  # --config {path}"


@pytest.mark.parametrize(
    ("pyproject", "env", "message"),
    [
        ("[tool.tether]\nwrokers = 2\n", {}, "pyproject.toml [tool.tether]: unknown key 'wrokers'"),
        (
            '[tool.tether]\nworkers = "many"\n',
            {},
            "pyproject.toml [tool.tether]: workers = 'many': 'many' is not a valid integer",
        ),
        ("[tool.tether\n", {}, "pyproject.toml is not valid TOML"),
        (b'[tool.tether]\nworkers = "\xff"\n', {}, "pyproject.toml is not valid TOML: not UTF-8"),
        ("", {"TETHER_WORKERS": "x"}, "environment (TETHER_WORKERS): workers = 'x'"),
        ("", {"TETHER_LOG_FORMAT": "xml"}, "environment (TETHER_LOG_FORMAT): log-format = 'xml'"),
        ("", {"PORT": "http"}, "PORT='http' is not a port number"),
        (
            '[tool.tether]\nroot-path = "api"\n',
            {},
            "--root-path must start with /, got 'api'; for example /api "
            "(set in pyproject.toml [tool.tether])",
        ),
    ],
)
def test_bad_values_are_one_line_naming_their_source(
    tmp_path: Path, pyproject: str | bytes, env: dict[str, str], message: str
) -> None:
    """A bad key or value from any source: one line saying where it was, exit code 2."""
    raw = pyproject if isinstance(pyproject, bytes) else pyproject.encode()
    (tmp_path / "pyproject.toml").write_bytes(raw)
    result = print_config(tmp_path, "echo:app", **env)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("tether: error: ") and message in err, err


def test_a_service_configured_by_file_and_environment(tmp_path: Path) -> None:
    """A master configured from [tool.tether] (pidfile, control, workers) and TETHER_ serves.

    The workers read their command line alone: a pidfile or control socket
    from the file or the environment is the master's.
    """
    port = free_port()
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tether]\n"
        f'app = "echo:app"\napp-dir = "{APPS}"\nworkers = 2\nport = {port}\n'
        f'pidfile = "{tmp_path / "t.pid"}"\ncontrol = "{tmp_path / "ctl.sock"}"\n'
        'root-path = "/from-file"\n'
    )
    t = Tether([], env={"TETHER_DEBUG_BIND": f"127.0.0.1:{free_port()}"}, cwd=tmp_path)
    t.start()
    try:
        t.ready()
        status, seen, _ = fetch(port, "/from-file/x")
        assert (status, seen["root_path"]) == (200, "/from-file")
        assert t.proc is not None
        assert (tmp_path / "t.pid").read_text().strip() == str(t.proc.pid)
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    finally:
        t.close()


def test_environment_overrides_the_file_in_a_running_service(tmp_path: Path) -> None:
    """TETHER_ROOT_PATH wins over the file's root-path in what the app sees."""
    port = free_port()
    (tmp_path / "pyproject.toml").write_text('[tool.tether]\nroot-path = "/file"\n')
    args = ["echo:app", "--app-dir", str(APPS), "--port", str(port), "--workers", "0"]
    t = Tether(args, env={"TETHER_ROOT_PATH": "/env", "TETHER_NO_DEBUG": "1"}, cwd=tmp_path)
    t.start()
    try:
        t.ready()
        assert fetch(port, "/env/")[1]["root_path"] == "/env"
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    finally:
        t.close()
