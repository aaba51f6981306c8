"""A master's first worker is begun before the master reads its options, and never left behind.

`tether run --workers N` forks that worker at its very start (tether._prestart); the
master hands it the sockets once it has bound them. What a user must never see from it:
a worker that holds what an exec'd one would not (tests/test_forkstart.py checks the
fds), a process left running when the master ends up not using it (a gunicorn config's
hooks, an option error), a zombie. Real processes on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tether._prestart import WORKERS_ENV, WORKERS_FLAGS, wants_master
from waiting import eventually

from proc import APPS, get, tether


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["run", "app:app", "--workers", "1"], {}, True),
        (["run", "app:app", "--workers=4"], {}, True),
        (["run", "app:app", "-w", "2"], {}, True),
        (["run", "app:app", "-w2"], {}, True),
        (["run", "app:app"], {"WEB_CONCURRENCY": "3"}, True),
        (["run", "app:app"], {"TETHER_WORKERS": "2"}, True),
        # The command line wins over the environment, as for every option.
        (["run", "app:app", "--workers", "0"], {"TETHER_WORKERS": "2"}, False),
        (["run", "app:app"], {"WEB_CONCURRENCY": "2", "TETHER_WORKERS": "0"}, False),
        (["run", "app:app"], {}, False),  # one process by default
        (["run", "app:app", "--workers", "many"], {}, False),  # its error is click's to give
        (["run", "app:app", "--", "--workers", "2"], {}, False),
        (["ctl", "status", "--workers", "2"], {}, False),
        ([], {"TETHER_WORKERS": "2"}, False),
    ],
)
def test_a_master_is_recognised_from_the_command_line_and_environment(
    argv: list[str], env: dict[str, str], expected: bool
) -> None:
    assert wants_master(argv, env) is expected


def test_the_worker_count_flags_are_the_command_lines() -> None:
    """What wants_master looks for is what `tether run` defines for --workers."""
    from tether.cli import run

    (param,) = [p for p in run.params if p.name == "workers"]
    assert sorted(param.opts) == sorted(WORKERS_FLAGS)
    assert param.opts[0] == WORKERS_FLAGS[0]  # the long one first


def test_the_worker_count_variables_are_the_sources() -> None:
    """What wants_master reads from the environment is what the option sources read."""
    from tether._configsources import ENV_PREFIX, FALLBACK_ENV

    assert (FALLBACK_ENV["workers"], ENV_PREFIX + "WORKERS") == WORKERS_ENV


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except OSError:
                continue
    return found


def _with_marker(marker: str) -> list[int]:
    """Every live process whose command line holds ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def test_the_first_worker_is_the_one_begun_before_the_options_were_read() -> None:
    """`--workers 1`: the master says so at debug level; the worker is its child and serves."""
    with tether("fdreport:app", "--workers", "1", "--log-level", "debug") as t:
        t.ready()
        status, body, _ = get(t.port)
        assert status == 200, body
        assert "is the one begun before the options were read" in t.output()
        assert t.proc is not None
        master = t.proc.pid
        workers = _children(master)
        assert len(workers) == 1, workers  # no second child waiting beside the worker
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_a_master_whose_config_runs_hooks_kills_and_reaps_the_unused_worker(
    tmp_path: Path,
) -> None:
    """A gunicorn config with a hook: the master spawns its workers itself; the early one goes."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("def post_fork(server, worker):\n    pass\n")
    with tether("fdreport:app", "--workers", "1", "-c", str(conf)) as t:
        t.ready()
        assert get(t.port)[0] == 200
        assert t.proc is not None
        master = t.proc.pid

        def only_the_worker() -> list[int] | None:
            children = _children(master)
            return children if len(children) == 1 else None

        (worker,) = eventually(only_the_worker, "one child: the worker the master spawned")
        with open(f"/proc/{worker}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "Z"
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_an_option_error_leaves_no_early_worker_behind() -> None:
    """`--workers 1` and a bad option: one line, exit 2, and no process of that command lives on."""
    marker = f"nosuchmodule{uuid.uuid4().hex}:app"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "run", marker, "--workers", "1", "--no-such-option"],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--no-such-option" in proc.stderr
    eventually(lambda: _with_marker(marker) == [], "no process of that command left", 10)
